//! Hostile and malformed input against a real server: a table of bad requests with their
//! exact codes and field paths, and a property test that arbitrary requests never crash the
//! service, always get a valid status, and leave it answering well-formed requests.

mod common;

use banditd::proto::{Arm, ChooseArmRequest, ReportRewardRequest};
use common::{TestServer, arm, fixed, test_config};
use proptest::prelude::*;
use tonic::Code;

/// Oversized and odd inputs: each gets its code and a message naming the field.
#[tokio::test]
async fn oversized_and_odd_inputs() {
    let server = TestServer::start(test_config()).await;
    let mut client = server.client().await;
    let huge_id = "x".repeat(1 << 20);
    let cases: Vec<(&str, ChooseArmRequest, Code, &str)> = vec![
        (
            "1 MB decision id",
            ChooseArmRequest {
                decision_id: huge_id.clone(),
                ..fixed("wheel", vec![0.0, 0.0])
            },
            Code::InvalidArgument,
            "decision_id: 1048576 bytes",
        ),
        (
            "1 MB arm id",
            ChooseArmRequest {
                model: "items".into(),
                context: vec![0.0; 8],
                candidates: vec![arm(&huge_id, vec![0.0; 8])],
                ..Default::default()
            },
            Code::InvalidArgument,
            "candidates[0].id: 1048576 bytes",
        ),
        (
            "100,000 candidates",
            ChooseArmRequest {
                model: "items".into(),
                context: vec![0.0; 8],
                candidates: (0..100_000).map(|i| arm(&i.to_string(), vec![])).collect(),
                ..Default::default()
            },
            Code::InvalidArgument,
            "candidates: 100000 candidates",
        ),
        (
            "empty context",
            fixed("wheel", vec![]),
            Code::InvalidArgument,
            "context: expected 2 values, got 0",
        ),
        (
            "enormous context",
            fixed("wheel", vec![0.0; 100_000]),
            Code::InvalidArgument,
            "context: expected 2 values, got 100000",
        ),
        (
            "empty arm id on fixed",
            ChooseArmRequest {
                candidates: vec![arm("", vec![])],
                ..fixed("wheel", vec![0.0, 0.0])
            },
            Code::InvalidArgument,
            "candidates[0].id: unknown arm",
        ),
    ];
    for (name, req, code, message) in cases {
        let status = client.choose_arm(req).await.expect_err(name);
        assert_eq!(status.code(), code, "{name}: {status:?}");
        assert!(
            status.message().contains(message),
            "{name}: {:?} lacks {message:?}",
            &status.message()[..status.message().len().min(200)]
        );
    }
    // Subnormal values are finite: accepted.
    client
        .choose_arm(fixed("wheel", vec![f32::MIN_POSITIVE / 2.0, -1e-40]))
        .await
        .unwrap();
    server.stop().await.unwrap();
}

fn any_f32() -> impl Strategy<Value = f32> {
    prop_oneof![
        any::<f32>(),
        Just(f32::NAN),
        Just(f32::INFINITY),
        -2.0f32..2.0
    ]
}

fn any_choose() -> impl Strategy<Value = ChooseArmRequest> {
    (
        prop_oneof![Just("wheel".to_owned()), Just("items".to_owned()), ".{0,6}"],
        prop::collection::vec(any_f32(), 0..12),
        prop::collection::vec(
            ("[0-9a-z]{0,3}", prop::collection::vec(any_f32(), 0..10))
                .prop_map(|(id, features)| Arm { id, features }),
            0..12,
        ),
        prop::collection::vec("[0-9a-z]{0,3}", 0..4),
        "[a-z0-9-]{0,8}",
        prop_oneof![Just(0u32), 1u32..20, any::<u32>()],
        prop_oneof![Just(0u32), 1u32..20, any::<u32>()],
        "[0-9a-z]{0,3}",
    )
        .prop_map(
            |(
                model,
                context,
                candidates,
                excluded_arm_ids,
                decision_id,
                propensity_samples,
                explain_samples,
                default_arm_id,
            )| ChooseArmRequest {
                model,
                context,
                candidates,
                excluded_arm_ids,
                decision_id,
                propensity_samples,
                explain_samples,
                default_arm_id,
            },
        )
}

fn any_report() -> impl Strategy<Value = ReportRewardRequest> {
    (
        prop_oneof![Just("wheel".to_owned()), Just("items".to_owned()), ".{0,6}"],
        "[a-z0-9-]{0,8}",
        prop_oneof![any::<f64>(), Just(f64::NAN), -1.0f64..1.0],
        prop::option::of(prop_oneof![any::<f64>(), Just(-1.0), 0.0f64..1.0]),
    )
        .prop_map(|(model, decision_id, reward, regret)| ReportRewardRequest {
            model,
            decision_id,
            reward,
            regret,
        })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    /// Arbitrary requests: never a panic or an unexpected code, and the server still
    /// answers a well-formed decision afterwards.
    #[test]
    fn arbitrary_requests_get_a_valid_status(chooses in prop::collection::vec(any_choose(), 1..8), reports in prop::collection::vec(any_report(), 1..8)) {
        let runtime = tokio::runtime::Runtime::new().unwrap();
        runtime.block_on(async {
            let server = TestServer::start(test_config()).await;
            let mut client = server.client().await;
            for req in chooses {
                if let Err(status) = client.choose_arm(req).await {
                    assert!(matches!(status.code(), Code::InvalidArgument | Code::NotFound), "{status:?}");
                }
            }
            for req in reports {
                if let Err(status) = client.report_reward(req).await {
                    assert!(matches!(status.code(), Code::InvalidArgument | Code::NotFound | Code::AlreadyExists), "{status:?}");
                }
            }
            client.choose_arm(fixed("wheel", vec![0.1, 0.2])).await.expect("still serving");
            server.stop().await.unwrap();
        });
    }
}

/// Values the client sent are echoed in error messages only up to a bound: a 1 MB unknown
/// model name or fixed-arm id still gets its own code and a short message, not a transport
/// error from trailers larger than the client accepts.
#[tokio::test]
async fn long_values_in_error_messages_are_bounded() {
    let server = TestServer::start(test_config()).await;
    let mut client = server.client().await;
    let huge = "y".repeat(1 << 20);
    let cases: Vec<(&str, ChooseArmRequest, Code, &str)> = vec![
        (
            "1 MB unknown model",
            fixed(&huge, vec![0.0, 0.0]),
            Code::NotFound,
            "model: no model named",
        ),
        (
            "1 MB unknown fixed-arm candidate id",
            ChooseArmRequest {
                candidates: vec![arm(&huge, vec![])],
                ..fixed("wheel", vec![0.0, 0.0])
            },
            Code::InvalidArgument,
            "candidates[0].id:",
        ),
        (
            "1 MB unknown excluded arm id",
            ChooseArmRequest {
                excluded_arm_ids: vec![huge.clone()],
                ..fixed("wheel", vec![0.0, 0.0])
            },
            Code::InvalidArgument,
            "excluded_arm_ids[0]:",
        ),
    ];
    for (name, req, code, prefix) in cases {
        let status = client.choose_arm(req).await.expect_err(name);
        assert_eq!(status.code(), code, "{name}: {:?}", status.code());
        assert!(
            status.message().starts_with(prefix),
            "{name}: {:.200}",
            status.message()
        );
        assert!(
            status.message().len() <= 1024,
            "{name}: {} bytes of message",
            status.message().len()
        );
    }
    let status = client
        .report_reward(ReportRewardRequest {
            model: huge.clone(),
            decision_id: "d".into(),
            reward: 1.0,
            regret: None,
        })
        .await
        .expect_err("unknown model");
    assert_eq!(status.code(), Code::NotFound, "{:?}", status.code());
    assert!(status.message().len() <= 1024);
    client
        .choose_arm(fixed("wheel", vec![0.1, 0.2]))
        .await
        .expect("still serving");
    server.stop().await.unwrap();
}

/// Finite but extreme values (a reward of 1e300, a context of 1e30; found by the fuzz target
/// in fuzz/, where they turned every later score into NaN) are refused by default with
/// INVALID_ARGUMENT naming the field and the limit.
#[tokio::test]
async fn extreme_finite_values_are_refused() {
    let server = TestServer::start(test_config()).await;
    let mut client = server.client().await;
    let err = client
        .choose_arm(fixed("wheel", vec![1e30, -1e30]))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(
        err.message().starts_with("context[0]") && err.message().contains("max_abs_value"),
        "{}",
        err.message()
    );
    let d = client
        .choose_arm(fixed("wheel", vec![0.1, 0.2]))
        .await
        .unwrap()
        .into_inner();
    let err = client
        .report_reward(ReportRewardRequest {
            model: "wheel".into(),
            decision_id: d.decision_id,
            reward: 1e300,
            regret: None,
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(
        err.message().contains("max_abs_reward"),
        "{}",
        err.message()
    );
    server.stop().await.unwrap();
}

/// With the magnitude limits raised out of the way, training on such values still does not
/// break the model for everyone: the learner skips steps whose loss overflows, and
/// NeuralLinear ignores non-finite features, so an ordinary decision keeps finite scores.
#[tokio::test]
async fn extreme_finite_values_do_not_poison_the_model() {
    for (context, reward) in [(vec![0.1, 0.2], 1e300), (vec![1e30, -1e30], 1.0)] {
        let mut config = test_config();
        config.limits.max_abs_value = f32::MAX;
        config.limits.max_abs_reward = f64::MAX;
        let server = TestServer::start(config).await;
        let mut client = server.client().await;
        let decision = client
            .choose_arm(fixed("wheel", context.clone()))
            .await
            .unwrap()
            .into_inner();
        client
            .report_reward(ReportRewardRequest {
                model: "wheel".into(),
                decision_id: decision.decision_id,
                reward,
                regret: None,
            })
            .await
            .unwrap();
        // Training and publishing take milliseconds; wait for the version to move.
        let mut scores = Vec::new();
        for _ in 0..200 {
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            let d = client
                .choose_arm(fixed("wheel", vec![0.1, 0.2]))
                .await
                .unwrap()
                .into_inner();
            scores = d.scores.iter().map(|s| s.score).collect();
            if d.model_version != decision.model_version {
                break;
            }
        }
        assert!(
            scores.iter().all(|s| s.is_finite()),
            "context {context:?}, reward {reward}: scores {scores:?}"
        );
        server.stop().await.unwrap();
    }
}

/// A reward outside the model's `reward_range`: refused with INVALID_ARGUMENT naming
/// `reward` under `reject`, leaving the decision open; taken as the nearest bound under
/// `clip` (a retry of the same raw value is then a duplicate of the clipped one).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reward_outside_the_range_is_refused_or_clipped() {
    for clip in [false, true] {
        let mut config = test_config();
        for model in &mut config.models {
            model.rewards.reward_range = Some([-1.0, 1.0]);
            if clip {
                model.rewards.on_reward_out_of_range = banditd::config::OnRewardOutOfRange::Clip;
            }
        }
        let server = TestServer::start(config).await;
        let mut client = server.client().await;
        let d = client
            .choose_arm(fixed("wheel", vec![0.1, 0.2]))
            .await
            .unwrap()
            .into_inner();
        let report = |r: f64| ReportRewardRequest {
            model: "wheel".into(),
            decision_id: d.decision_id.clone(),
            reward: r,
            regret: None,
        };
        let outcome = client.report_reward(report(-1e6)).await;
        if clip {
            assert!(!outcome.unwrap().into_inner().duplicate);
            let again = client.report_reward(report(-1e6)).await.unwrap();
            assert!(again.into_inner().duplicate, "the clipped reward's retry");
            let other = client.report_reward(report(-1.0)).await.unwrap();
            assert!(other.into_inner().duplicate, "-1e6 was taken as -1");
        } else {
            let err = outcome.unwrap_err();
            assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
            assert!(err.message().starts_with("reward:"), "{}", err.message());
            let ok = client.report_reward(report(0.5)).await.unwrap();
            assert!(
                !ok.into_inner().duplicate,
                "the refused reward left it open"
            );
        }
        server.stop().await.unwrap();
    }
}
