//! A minimal banditd client: list the models, ask for a decision, report its reward.
//!
//! Start the server (`cargo run --release`), then:
//!     cargo run --release --example client -- http://127.0.0.1:50051
//! Against a server with tokens and TLS (the token from the environment, which `ps` does not
//! show; `--client-cert`/`--client-key` when it requires client certificates):
//!     BANDITD_TOKEN=... cargo run --release --example client -- https://banditd.example:50051 \
//!         --ca-cert ca.pem

use std::path::PathBuf;

use banditd::proto::{
    Arm, ChooseArmRequest, ListModelsRequest, ReportRewardRequest,
    bandit_service_client::BanditServiceClient,
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
    Ok(())
}
