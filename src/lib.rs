//! banditd: a self-hosted contextual-bandit decision service.
//!
//! Clients ask which arm to show for a context (`ChooseArm`) and later report the reward
//! (`ReportReward`). Decisions are Thompson samples from an MC-dropout reward network: one
//! set of dropout masks is one posterior sample of the weights, and it scores every
//! candidate of the decision. A learner thread per model folds rewards in with minibatch
//! SGD and publishes copied weights that serving reads without locks.
//!
//! # Layout
//! - [`config`]: the TOML configuration and the embedded default.
//! - [`error`]: the domain error enum (no gRPC in it).
//! - [`model`]: the candle network, its masks, trainable and published weights.
//! - [`policy`]: Thompson sampling over a published snapshot.
//! - [`decisions`]: pending decisions awaiting rewards, bounded, with window expiry.
//! - [`learner`]: the training thread, replay buffer, and snapshot publishing.
//! - [`engine`]: models by name, request validation, decide / report / expire.
//! - [`grpc`]: the tonic service, health and reflection; the only user of [`proto`].
//! - [`proto`]: generated code.
//! - [`metrics`]: metric names and one function per event.
//! - [`sim`]: seeded simulated environments for load generation and tests.
//! - [`server`]: wires it all together and shuts it down in order.
//! - [`shutdown`]: OS signals as a future.

pub mod config;
pub mod decisions;
pub mod engine;
pub mod error;
pub mod grpc;
pub mod harness;
pub mod learner;
pub mod metrics;
pub mod model;
pub mod policy;
pub mod proto;
pub mod server;
pub mod shutdown;
pub mod sim;
pub mod storage;

pub use config::Config;
pub use error::Error;
pub use server::run;
