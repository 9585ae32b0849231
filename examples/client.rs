//! A minimal banditd client: list the models, ask for a decision, report its reward.
//!
//! Start the server (`cargo run --release`), then:
//!     cargo run --release --example client -- http://127.0.0.1:50051
//! Against a server with tokens and TLS (the token from the environment, which `ps` does not
//! show; `--client-cert`/`--client-key` when it requires client certificates):
//!     BANDITD_TOKEN=... cargo run --release --example client -- https://banditd.example:50051 \
//!         --ca-cert ca.pem
//! With `--admin` (an admin token, if tokens are configured) it then creates a model, drives
//! it, changes its learning rate, rolls it back to its newest checkpoint and deletes it.

use std::path::PathBuf;

use banditd::proto::{
    Arm, ChooseArmRequest, CreateModelRequest, DeleteModelRequest, ListCheckpointsRequest,
    ListModelsRequest, ModelKind, ModelSpec, ReportRewardRequest, RollbackModelRequest,
    UpdateModelRequest, bandit_service_client::BanditServiceClient,
};
use clap::Parser;
use tonic::{
    Request, Status,
    metadata::MetadataValue,
    transport::{Certificate, Channel, ClientTlsConfig, Identity},
};

/// List the models, decide, report rewards.
#[derive(Debug, Parser)]
struct Args {
    /// The server.
    #[arg(default_value = "http://127.0.0.1:50051")]
    url: String,
    /// Bearer token for every call.
    #[arg(long, env = "BANDITD_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// PEM CA certificate of the server's certificate; turns TLS on (as does `https://`).
    #[arg(long)]
    ca_cert: Option<PathBuf>,
    /// PEM client certificate (mutual TLS).
    #[arg(long, requires = "client_key")]
    client_cert: Option<PathBuf>,
    /// PEM key of `--client-cert`.
    #[arg(long, requires = "client_cert")]
    client_key: Option<PathBuf>,
    /// Then create a model, drive it, update it, roll it back and delete it.
    #[arg(long)]
    admin: bool,
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = Args::parse();
    let mut endpoint = Channel::from_shared(args.url.clone())?;
    if args.url.starts_with("https://") || args.ca_cert.is_some() {
        let mut tls = ClientTlsConfig::new();
        if let Some(ca) = &args.ca_cert {
            tls = tls.ca_certificate(Certificate::from_pem(std::fs::read(ca)?));
        }
        if let (Some(cert), Some(key)) = (&args.client_cert, &args.client_key) {
            tls = tls.identity(Identity::from_pem(
                std::fs::read(cert)?,
                std::fs::read(key)?,
            ));
        }
        endpoint = endpoint.tls_config(tls)?;
    }
    let token: Option<MetadataValue<_>> = match &args.token {
        Some(t) => Some(format!("Bearer {t}").parse()?),
        None => None,
    };
    let add_token = move |mut request: Request<()>| -> Result<Request<()>, Status> {
        if let Some(token) = &token {
            request
                .metadata_mut()
                .insert("authorization", token.clone());
        }
        Ok(request)
    };
    let mut client = BanditServiceClient::with_interceptor(endpoint.connect().await?, add_token);

    for model in client
        .list_models(ListModelsRequest {})
        .await?
        .into_inner()
        .models
    {
        println!(
            "model {:?}: context_dim {}, arms {:?}, version {}, decisions {}, rewards {}",
            model.name,
            model.context_dim,
            model.arm_ids,
            model.model_version,
            model.decisions,
            model.rewards
        );
    }

    // A fixed-arm model: the candidates default to every configured arm.
    let decision = client
        .choose_arm(ChooseArmRequest {
            model: "wheel".into(),
            context: vec![0.3, -0.8],
            ..Default::default()
        })
        .await?
        .into_inner();
    println!(
        "wheel chose arm {} (decision {})",
        decision.arm_id, decision.decision_id
    );
    for s in &decision.scores {
        println!("  arm {}: sampled expected reward {:.3}", s.arm_id, s.score);
    }
    client
        .report_reward(ReportRewardRequest {
            model: "wheel".into(),
            decision_id: decision.decision_id,
            reward: 1.0,
            regret: None,
        })
        .await?;

    // A per-arm-feature model: every candidate brings its features.
    let decision = client
        .choose_arm(ChooseArmRequest {
            model: "items".into(),
            context: vec![0.1; 8],
            candidates: vec![
                Arm {
                    id: "sku-1".into(),
                    features: vec![0.5; 8],
                },
                Arm {
                    id: "sku-2".into(),
                    features: vec![-0.5; 8],
                },
            ],
            ..Default::default()
        })
        .await?
        .into_inner();
    println!(
        "items chose {} (decision {})",
        decision.arm_id, decision.decision_id
    );
    client
        .report_reward(ReportRewardRequest {
            model: "items".into(),
            decision_id: decision.decision_id,
            reward: 0.0,
            regret: None,
        })
        .await?;
    println!("rewards reported");
    if !args.admin {
        return Ok(());
    }

    // A model made at runtime: two arms, 10% of decisions held out for a uniform control.
    let name = "example-admin";
    let created = client
        .create_model(CreateModelRequest {
            spec: Some(ModelSpec {
                name: name.into(),
                kind: ModelKind::FixedArms as i32,
                context_dim: 2,
                arms: vec!["x".into(), "y".into()],
                arm_feature_dim: 0,
                hidden_layers: vec![32],
                settings: vec!["holdout={ fraction = 0.1 }".into()],
            }),
        })
        .await?
        .into_inner();
    println!("created {name:?}, version {}", created.model_version);
    for i in 0..200 {
        let context = vec![(i % 10) as f32 / 10.0, 1.0];
        let decision = client
            .choose_arm(ChooseArmRequest {
                model: name.into(),
                context,
                ..Default::default()
            })
            .await?
            .into_inner();
        // Arm x pays 1, arm y 0.
        let reward = if decision.arm_id == "x" { 1.0 } else { 0.0 };
        client
            .report_reward(ReportRewardRequest {
                model: name.into(),
                decision_id: decision.decision_id,
                reward,
                regret: None,
            })
            .await?;
    }
    let updated = client
        .update_model(UpdateModelRequest {
            model: name.into(),
            settings: vec!["learning_rate=0.001".into()],
        })
        .await?
        .into_inner();
    println!(
        "updated: learning_rate {}, version {}; lift over the control {:?} (95% {:?} to {:?})",
        updated.learning_rate,
        updated.model_version,
        updated.lift,
        updated.lift_ci_low,
        updated.lift_ci_high
    );
    let checkpoints = client
        .list_checkpoints(ListCheckpointsRequest { model: name.into() })
        .await?
        .into_inner()
        .checkpoints;
    if let Some(newest) = checkpoints.first() {
        let rolled = client
            .rollback_model(RollbackModelRequest {
                model: name.into(),
                version: newest.version,
            })
            .await?
            .into_inner();
        println!(
            "rolled back to {}'s weights: now version {}",
            newest.version, rolled.model_version
        );
    }
    client
        .delete_model(DeleteModelRequest {
            model: name.into(),
            drop_checkpoints: true,
        })
        .await?;
    println!("deleted {name:?}");
    Ok(())
}
