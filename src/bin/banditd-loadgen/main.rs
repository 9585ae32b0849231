//! Placeholder until the load generator lands (issue 3).
fn main() {}
