//! A minimal banditd client: list the models, ask for a decision, report its reward.
//!
//! Start the server (`cargo run --release`), then:
//!     cargo run --example client -- http://127.0.0.1:50051

use banditd::proto::{
    Arm, ChooseArmRequest, ListModelsRequest, ReportRewardRequest,
    bandit_service_client::BanditServiceClient,
};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let url = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "http://127.0.0.1:50051".into());
    let mut client = BanditServiceClient::connect(url).await?;

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
