//! The policy language without servers: parsing, evaluation, lint, the documented
//! examples, properties and regressions, the parser fuzz targets, and the `evaluate` /
//! `policy` commands of the built binary. One test binary (issue 9).

mod cli;
mod docs;
mod eval;
mod limits;
mod lint;
mod parse;
mod parser_fuzz;
mod props;
mod regressions;
