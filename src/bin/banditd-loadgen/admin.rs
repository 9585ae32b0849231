//! `banditd-loadgen admin`: the admin RPCs from the command line (create, update, delete a
//! model, list its checkpoints, roll it back, show it), so that a model can be created,
//! driven with `grpc --model NAME`, changed, rolled back and deleted without writing a client.

use anyhow::Context;
use banditd::proto::{
    CreateModelRequest, DeleteModelRequest, GetModelRequest, ListCheckpointsRequest, ModelInfo,
    ModelKind, ModelSpec, RollbackModelRequest, UpdateModelRequest,
};
use tokio::runtime::Builder;

use crate::{
    cli::{AdminAction, AdminArgs, SpecKind, Transport},
    connect::{Client, Connector},
};

/// Runs one admin call and prints its answer.
///
/// # Errors
/// The server cannot be reached or refuses the call (its status is printed).
pub(crate) fn main(args: AdminArgs) -> anyhow::Result<()> {
    let runtime = Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the runtime")?;
    runtime.block_on(run(args))
}

async fn run(args: AdminArgs) -> anyhow::Result<()> {
    // The admin calls are gRPC only (the HTTP face serves the bandit calls).
    let connector = Connector::new(
        &args.target,
        Transport::Grpc,
        &args.connect,
        args.request_timeout,
    )?;
    let Some(Client::Grpc(mut client)) = connector.connect(1).await?.pop() else {
        anyhow::bail!("no gRPC connection to {}", args.target);
    };
    let status = |e: tonic::Status| anyhow::anyhow!("{:?}: {}", e.code(), e.message());
    match args.action {
        AdminAction::Create {
            name,
            kind,
            context_dim,
            arms,
            arm_feature_dim,
            hidden_layers,
            settings,
        } => {
            let spec = ModelSpec {
                name,
                kind: match kind {
                    SpecKind::FixedArms => ModelKind::FixedArms,
                    SpecKind::PerArmFeatures => ModelKind::PerArmFeatures,
                } as i32,
                context_dim,
                arms,
                arm_feature_dim,
                hidden_layers,
                settings,
            };
            let info = client
                .create_model(CreateModelRequest { spec: Some(spec) })
                .await
                .map_err(status)?
                .into_inner();
            print_model("created", &info);
        }
        AdminAction::Update { model, settings } => {
            let info = client
                .update_model(UpdateModelRequest { model, settings })
                .await
                .map_err(status)?
                .into_inner();
            print_model("updated", &info);
        }
        AdminAction::Delete {
            model,
            drop_checkpoints,
        } => {
            client
                .delete_model(DeleteModelRequest {
                    model: model.clone(),
                    drop_checkpoints,
                })
                .await
                .map_err(status)?;
            println!("deleted {model:?}");
        }
        AdminAction::Checkpoints { model } => {
            let list = client
                .list_checkpoints(ListCheckpointsRequest { model })
                .await
                .map_err(status)?
                .into_inner()
                .checkpoints;
            println!(
                "{:>22} {:>15} {:>12} {:>10}",
                "version", "created_ms", "steps", "rewards"
            );
            for c in list {
                println!(
                    "{:>22} {:>15} {:>12} {:>10}",
                    c.version, c.created_ms, c.training_steps, c.rewards
                );
            }
        }
        AdminAction::Rollback { model, version } => {
            let info = client
                .rollback_model(RollbackModelRequest { model, version })
                .await
                .map_err(status)?
                .into_inner();
            print_model(&format!("rolled back to {version}:"), &info);
        }
        AdminAction::Get { model } => {
            let info = client
                .get_model(GetModelRequest { model })
                .await
                .map_err(status)?
                .into_inner();
            print_model("model", &info);
        }
    }
    Ok(())
}

/// One model's settings, version and counters, and its holdout groups and lift if any.
fn print_model(what: &str, m: &ModelInfo) {
    println!(
        "{what} {:?}: version {}, policy {}, learning_rate {}, reward_window {} s, decisions {}, \
         rewards {}, steps {}",
        m.name,
        m.model_version,
        m.policy,
        m.learning_rate,
        m.reward_window_seconds,
        m.decisions,
        m.rewards,
        m.training_steps
    );
    if m.holdout_fraction > 0.0 {
        let group = |g: Option<&banditd::proto::GroupStats>| {
            g.map_or_else(String::new, |g| {
                format!("{} rewards, mean {:.4}", g.rewards, g.reward_mean)
            })
        };
        println!(
            "  holdout {} ({}): treatment {}; control {}",
            m.holdout_fraction,
            m.holdout_control,
            group(m.treatment.as_ref()),
            group(m.control.as_ref())
        );
        if let (Some(lift), Some(low), Some(high)) = (m.lift, m.lift_ci_low, m.lift_ci_high) {
            println!("  lift {lift:.4} (95% interval {low:.4} to {high:.4})");
        }
    }
}
