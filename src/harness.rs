//! In-process simulation harness (issue 3): runs the environments of [`crate::sim`] against
//! the policy and learner directly, without gRPC. Being written; see the load generator.
