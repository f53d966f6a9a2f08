// `sqlx::migrate!` embeds migrations/ at compile time, but cargo does not know that the
// crate depends on that folder: without this, a new migration alone leaves a stale
// binary that never applies it.
fn main() {
    println!("cargo:rerun-if-changed=migrations");
}
