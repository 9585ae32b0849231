//! banditd: a self-hosted contextual-bandit decision service.
//!
//! Clients ask which arm to show for a context (`ChooseArm`) and later report the reward
//! (`ReportReward`). Decisions are Thompson samples from a neural reward model: one posterior
//! sample (NeuralLinear's Bayesian last layer by default, or one set of MC-dropout masks)
//! scores every candidate of the decision. Every decision and reward is appended to a log;
//! a learner thread per model reads its examples from the log, folds them in with minibatch
//! SGD and publishes copied weights that serving reads without locks.
//!
//! # Layout
//! Listed bottom up: a module imports only modules listed above it.
//! - [`domain`]: plain data shared by the layers (a training example, the clock).
//! - [`error`]: the domain error enum (no gRPC in it).
//! - [`config`]: the TOML configuration and the embedded default.
//! - [`proto`]: generated code: the gRPC API and the log's record format.
//! - [`telemetry`]: process and per-thread CPU time as metrics.
//! - [`metrics`]: metric names and one function per event; installs the exporter.
//! - [`model`]: the candle network, its masks, trainable and copied weights, Bayesian linear
//!   regression (no policy knowledge).
//! - [`policy`]: the published snapshot (weights, reward scale, decision rule) and the
//!   policies that decide from it.
//! - [`storage`]: the append-only decision/reward log, checkpoints, recovery, export.
//! - [`learner`]: the training thread: reads its model's examples from the log, trains,
//!   publishes snapshots, writes checkpoints.
//! - [`registry`]: the persisted list of models (created, changed, deleted at runtime).
//! - [`decisions`]: pending decisions awaiting rewards, bounded, with window expiry.
//! - [`offline`]: offline evaluation (IPS, SNIPS, DR) and warm start from logged decisions.
//! - [`engine`]: models by name, request validation, decide / report / expire, startup.
//! - [`api`]: the bandit API in wire types, shared by both transports: conversions, the
//!   error mapping, tokens, the in-flight limit, TLS.
//! - [`grpc`]: the tonic service, health and reflection (the API side of [`proto`]).
//! - [`http`]: the HTTP/JSON face on its own port (`[http] addr`), over the same [`api`].
//! - [`cluster`]: cluster mode over NATS JetStream (replicas publish events, one trainer per
//!   model, snapshots through the object store).
//! - [`server`]: wires it all together and shuts it down in order.
//! - [`shutdown`]: OS signals as a future.
//! - [`sim`], [`harness`]: seeded simulated environments and the in-process regret harness,
//!   for the load generator, benchmarks and tests (feature `sim`, on by default; the server
//!   is built without it).

pub mod api;
pub mod cluster;
pub mod config;
pub mod decisions;
pub mod domain;
pub mod engine;
pub mod error;
pub mod grpc;
#[cfg(feature = "sim")]
pub mod harness;
pub mod http;
pub mod learner;
pub mod metrics;
pub mod model;
pub mod offline;
pub mod policy;
pub mod proto;
pub mod registry;
pub mod server;
pub mod shutdown;
#[cfg(feature = "sim")]
pub mod sim;
pub mod storage;
pub mod telemetry;

pub use config::Config;
pub use error::Error;
pub use server::run;
