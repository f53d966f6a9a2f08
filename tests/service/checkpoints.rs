//! Signed checkpoints written by `serve` (SPEC §14): with `checkpoint_key_file` and
//! `checkpoint_dir` set, serve signs the chain heads periodically; `audit verify
//! --checkpoints` accepts them with the right public key and refuses another key.

use crate::harness::policies::policies_dir;
use crate::harness::serial;
use crate::harness::serve::{InProcess, Rig, run};
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_writes_signed_checkpoints_that_audit_verify_checks() {
    let Some(_serial) = serial::service_test().await else {
        return;
    };
    let rig = Rig::with("sg_checkpoint_", "ckpt", |_| policies_dir()).await;
    let work = tempfile::tempdir().unwrap();
    let (secret, public) = spendguard::approvals::keygen();
    let key_file = work.path().join("checkpoint.key");
    std::fs::write(&key_file, format!("{secret}\n")).unwrap();
    let dir = work.path().join("checkpoints");
    let config = work.path().join("serve.yaml");
    std::fs::write(
        &config,
        format!(
            "checkpoint_key_file: {}\ncheckpoint_dir: {}\ncheckpoint_interval_s: 1\n",
            key_file.display(),
            dir.display()
        ),
    )
    .unwrap();
    let mut args = rig.service_args("ckpt-1");
    args.config = Some(config);
    let service = InProcess::start(args);

    // Start-up records the policy activation: there is something to sign at once.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let files = loop {
        let files: Vec<String> = std::fs::read_dir(&dir)
            .map(|d| {
                d.filter_map(|e| e.ok()?.file_name().into_string().ok())
                    .filter(|n| n.starts_with("checkpoint-") && n.ends_with(".json"))
                    .collect()
            })
            .unwrap_or_default();
        if !files.is_empty() || tokio::time::Instant::now() > deadline {
            break files;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    service.stop().await;
    assert!(!files.is_empty(), "no checkpoint written in 60 s");
    assert!(
        files.iter().all(|f| f.ends_with("-ckpt-1.json")),
        "{files:?}"
    );

    let dir_s = dir.to_str().unwrap();
    let (code, text) = run(&[
        "audit",
        "verify",
        "--database-url",
        &rig.db,
        "--checkpoints",
        dir_s,
        "--checkpoint-public-key",
        &public,
    ]);
    assert_eq!(code, 0, "{text}");
    assert!(text.contains("signed checkpoint(s)"), "{text}");
    let (_, other) = spendguard::approvals::keygen();
    let (code, text) = run(&[
        "audit",
        "verify",
        "--database-url",
        &rig.db,
        "--checkpoints",
        dir_s,
        "--checkpoint-public-key",
        &other,
    ]);
    assert_ne!(code, 0, "{text}");
}
