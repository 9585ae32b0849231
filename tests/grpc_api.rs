//! The gRPC surface against a real server on 127.0.0.1 port 0: every RPC's happy path, every
//! validation error with its code and field, idempotency, expiry, eviction and concurrency.

mod common;

use std::time::Duration;

use banditd::{
    config::OnLogFull,
    config::{ModelConfig, ModelKind},
    proto::{
        ChooseArmRequest, GetModelRequest, ListModelsRequest, ModelKind as PbKind,
        ReportRewardRequest,
    },
};
use common::{TestServer, arm, fixed, reward, test_config};
use tonic::Code;
use tonic_types::StatusExt;

/// ListModels and GetModel describe the embedded default's two models.
#[tokio::test]
async fn list_and_get_models() {
    let server = TestServer::start(test_config()).await;
    let mut client = server.client().await;
    let models = client
        .list_models(ListModelsRequest {})
        .await
        .unwrap()
        .into_inner()
        .models;
    let names: Vec<&str> = models.iter().map(|m| m.name.as_str()).collect();
    assert_eq!(names, ["wheel", "items"]);
    let wheel = client
        .get_model(GetModelRequest {
            model: "wheel".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(wheel.kind, PbKind::FixedArms as i32);
    assert_eq!(wheel.arm_ids, ["0", "1", "2", "3", "4"]);
    assert_eq!(
        (wheel.context_dim, wheel.hidden_layers.clone()),
        (2, vec![100, 100])
    );
    assert_eq!(wheel.drop_rates.len(), 3);
    let items = client
        .get_model(GetModelRequest {
            model: "items".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (items.kind, items.arm_feature_dim),
        (PbKind::PerArmFeatures as i32, 8)
    );
    let err = client
        .get_model(GetModelRequest {
            model: "nope".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    server.stop().await.unwrap();
}

/// A fixed-arm decision scores every arm (or the named subset minus exclusions), a reward
/// joins it, a retry of the same reward is OK, and the counters move.
#[tokio::test]
async fn fixed_arm_round_trip() {
    let server = TestServer::start(test_config()).await;
    let mut client = server.client().await;
    let all = client
        .choose_arm(fixed("wheel", vec![0.1, 0.2]))
        .await
        .unwrap()
        .into_inner();
    assert!(!all.decision_id.is_empty());
    assert_eq!(
        all.scores
            .iter()
            .map(|s| s.arm_id.as_str())
            .collect::<Vec<_>>(),
        ["0", "1", "2", "3", "4"]
    );
    let best = all
        .scores
        .iter()
        .max_by(|a, b| a.score.total_cmp(&b.score))
        .unwrap();
    assert_eq!(
        all.arm_id, best.arm_id,
        "the chosen arm has the best sampled score"
    );
    assert!(all.scores.iter().all(|s| s.score.is_finite()));

    let mut req = fixed("wheel", vec![0.1, 0.2]);
    req.candidates = vec![arm("3", vec![]), arm("1", vec![]), arm("4", vec![])];
    req.excluded_arm_ids = vec!["4".into()];
    let subset = client.choose_arm(req).await.unwrap().into_inner();
    assert_eq!(
        subset
            .scores
            .iter()
            .map(|s| s.arm_id.as_str())
            .collect::<Vec<_>>(),
        ["3", "1"]
    );
    assert!(["3", "1"].contains(&subset.arm_id.as_str()));
    assert_ne!(subset.decision_id, all.decision_id);

    let first = client
        .report_reward(reward("wheel", &all.decision_id, 1.5))
        .await
        .unwrap()
        .into_inner();
    assert!(!first.duplicate);
    let again = client
        .report_reward(reward("wheel", &all.decision_id, 1.5))
        .await
        .unwrap()
        .into_inner();
    assert!(again.duplicate, "the same reward again is a retry");
    let conflict = client
        .report_reward(reward("wheel", &all.decision_id, 0.0))
        .await
        .unwrap_err();
    assert_eq!(conflict.code(), Code::AlreadyExists);

    let info = client
        .get_model(GetModelRequest {
            model: "wheel".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (info.decisions, info.rewards, info.pending_decisions),
        (2, 1, 2)
    );
    server.stop().await.unwrap();
}

/// A per-arm decision scores each candidate's features; arms may be new on every request.
#[tokio::test]
async fn per_arm_round_trip() {
    let server = TestServer::start(test_config()).await;
    let mut client = server.client().await;
    let req = ChooseArmRequest {
        model: "items".into(),
        context: vec![0.5; 8],
        candidates: vec![
            arm("a", vec![0.1; 8]),
            arm("b", vec![-0.2; 8]),
            arm("c", vec![1.0; 8]),
        ],
        excluded_arm_ids: vec!["b".into(), "not-a-candidate".into()],
        ..Default::default()
    };
    let resp = client.choose_arm(req).await.unwrap().into_inner();
    assert_eq!(
        resp.scores
            .iter()
            .map(|s| s.arm_id.as_str())
            .collect::<Vec<_>>(),
        ["a", "c"]
    );
    assert!(["a", "c"].contains(&resp.arm_id.as_str()));
    let ok = client
        .report_reward(reward("items", &resp.decision_id, 1.0))
        .await
        .unwrap()
        .into_inner();
    assert!(!ok.duplicate);
    server.stop().await.unwrap();
}

/// A retried ChooseArm with the same client-chosen id returns the same decision and scores,
/// not a new posterior sample (the default model has dropout, so a new sample would differ).
#[tokio::test]
async fn client_decision_id_is_idempotent() {
    let server = TestServer::start(test_config()).await;
    let mut client = server.client().await;
    let mut req = fixed("wheel", vec![0.3, -0.7]);
    req.decision_id = "order-1234".into();
    let first = client.choose_arm(req.clone()).await.unwrap().into_inner();
    assert_eq!(first.decision_id, "order-1234");
    for _ in 0..5 {
        assert_eq!(
            client.choose_arm(req.clone()).await.unwrap().into_inner(),
            first
        );
    }
    // Fresh samples for other ids do vary, which is what makes the check above meaningful.
    let mut distinct = std::collections::HashSet::new();
    for _ in 0..10 {
        let other = client
            .choose_arm(fixed("wheel", vec![0.3, -0.7]))
            .await
            .unwrap()
            .into_inner();
        distinct.insert(format!(
            "{:?}",
            other
                .scores
                .iter()
                .map(|s| s.score.to_bits())
                .collect::<Vec<_>>()
        ));
    }
    assert!(distinct.len() > 5, "posterior samples did not vary");
    let info = client
        .get_model(GetModelRequest {
            model: "wheel".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(info.decisions, 11, "retries draw no sample");
    server.stop().await.unwrap();
}

/// Every malformed request gets its code and a message naming the field.
#[tokio::test]
async fn errors_name_the_field() {
    let server = TestServer::start(test_config()).await;
    let mut client = server.client().await;
    let items = |candidates| ChooseArmRequest {
        model: "items".into(),
        context: vec![0.0; 8],
        candidates,
        ..Default::default()
    };
    let with = |f: fn(&mut ChooseArmRequest)| {
        let mut r = fixed("wheel", vec![0.1, 0.2]);
        f(&mut r);
        r
    };
    let cases: Vec<(&str, ChooseArmRequest, Code, &str)> = vec![
        (
            "unknown model",
            fixed("nope", vec![0.0, 0.0]),
            Code::NotFound,
            "model",
        ),
        (
            "empty model",
            fixed("", vec![0.0, 0.0]),
            Code::InvalidArgument,
            "model",
        ),
        (
            "short context",
            fixed("wheel", vec![0.0]),
            Code::InvalidArgument,
            "context: expected 2 values, got 1",
        ),
        (
            "NaN context",
            fixed("wheel", vec![0.0, f32::NAN]),
            Code::InvalidArgument,
            "context[1]: NaN is not finite",
        ),
        (
            "inf context",
            fixed("wheel", vec![f32::NEG_INFINITY, 0.0]),
            Code::InvalidArgument,
            "context[0]: -inf is not finite",
        ),
        (
            "unknown arm",
            with(|r| r.candidates = vec![arm("0", vec![]), arm("9", vec![])]),
            Code::InvalidArgument,
            "candidates[1].id: unknown arm \"9\"",
        ),
        (
            "duplicate arm",
            with(|r| r.candidates = vec![arm("0", vec![]), arm("0", vec![])]),
            Code::InvalidArgument,
            "candidates[1].id: duplicate arm id",
        ),
        (
            "features on fixed",
            with(|r| r.candidates = vec![arm("0", vec![1.0])]),
            Code::InvalidArgument,
            "candidates[0].features",
        ),
        (
            "unknown excluded",
            with(|r| r.excluded_arm_ids = vec!["x".into()]),
            Code::InvalidArgument,
            "excluded_arm_ids[0]: unknown arm",
        ),
        (
            "all excluded",
            with(|r| r.excluded_arm_ids = (0..5).map(|i| i.to_string()).collect()),
            Code::InvalidArgument,
            "excluded_arm_ids: every candidate is excluded",
        ),
        (
            "long decision id",
            with(|r| r.decision_id = "x".repeat(1000)),
            Code::InvalidArgument,
            "decision_id: 1000 bytes",
        ),
        (
            "no candidates per-arm",
            items(vec![]),
            Code::InvalidArgument,
            "candidates: model \"items\"",
        ),
        (
            "missing features",
            items(vec![arm("a", vec![])]),
            Code::InvalidArgument,
            "candidates[0].features: expected 8 values, got 0",
        ),
        (
            "NaN feature",
            items(vec![
                arm("a", vec![0.0; 8]),
                arm("b", {
                    let mut f = vec![0.0; 8];
                    f[3] = f32::NAN;
                    f
                }),
            ]),
            Code::InvalidArgument,
            "candidates[1].features[3]: NaN",
        ),
        (
            "empty arm id",
            items(vec![arm("", vec![0.0; 8])]),
            Code::InvalidArgument,
            "candidates[0].id: must not be empty",
        ),
        (
            "duplicate per-arm",
            items(vec![arm("a", vec![0.0; 8]), arm("a", vec![0.0; 8])]),
            Code::InvalidArgument,
            "candidates[1].id: duplicate",
        ),
        (
            "too many candidates",
            items(
                (0..1025)
                    .map(|i| arm(&i.to_string(), vec![0.0; 8]))
                    .collect(),
            ),
            Code::InvalidArgument,
            "candidates: 1025 candidates",
        ),
    ];
    for (name, req, code, message) in cases {
        let status = client.choose_arm(req).await.expect_err(name);
        assert_eq!(status.code(), code, "{name}: {status:?}");
        assert!(
            status.message().contains(message),
            "{name}: {:?} lacks {message:?}",
            status.message()
        );
    }

    let decision = client
        .choose_arm(fixed("wheel", vec![0.0, 0.0]))
        .await
        .unwrap()
        .into_inner();
    let report = |model: &str, id: &str, reward: f64, regret: Option<f64>| ReportRewardRequest {
        model: model.into(),
        decision_id: id.into(),
        reward,
        regret,
    };
    let cases = vec![
        (
            "reward NaN",
            report("wheel", &decision.decision_id, f64::NAN, None),
            Code::InvalidArgument,
            "reward: NaN is not finite",
        ),
        (
            "regret negative",
            report("wheel", &decision.decision_id, 1.0, Some(-1.0)),
            Code::InvalidArgument,
            "regret",
        ),
        (
            "unknown decision",
            report("wheel", "never-made", 1.0, None),
            Code::NotFound,
            "decision_id",
        ),
        (
            "empty decision",
            report("wheel", "", 1.0, None),
            Code::InvalidArgument,
            "decision_id: must not be empty",
        ),
        (
            "other model's decision",
            report("items", &decision.decision_id, 1.0, None),
            Code::NotFound,
            "decision_id",
        ),
        (
            "unknown model",
            report("nope", &decision.decision_id, 1.0, None),
            Code::NotFound,
            "model",
        ),
    ];
    for (name, req, code, message) in cases {
        let status = client.report_reward(req).await.expect_err(name);
        assert_eq!(status.code(), code, "{name}: {status:?}");
        assert!(
            status.message().contains(message),
            "{name}: {:?} lacks {message:?}",
            status.message()
        );
    }
    // The refused reports left the decision open.
    client
        .report_reward(report("wheel", &decision.decision_id, 1.0, Some(0.5)))
        .await
        .unwrap();
    server.stop().await.unwrap();
}

fn short_window_model(name: &str, default_reward: Option<f64>) -> ModelConfig {
    let mut model = ModelConfig::new(name, ModelKind::FixedArms, 2);
    model.arms = vec!["a".into(), "b".into()];
    model.network.hidden_layers = vec![8];
    model.pending.reward_window_seconds = 0.2;
    model.pending.default_reward = default_reward;
    model
}

/// When the window closes, a decision is trained on the default reward (if configured) or
/// dropped; either way a late reward is NOT_FOUND.
#[tokio::test]
async fn window_expiry_and_default_reward() {
    let mut config = test_config();
    config.models = vec![
        short_window_model("defaulted", Some(0.0)),
        short_window_model("dropped", None),
    ];
    let server = TestServer::start(config).await;
    let mut client = server.client().await;
    let mut ids = Vec::new();
    for model in ["defaulted", "dropped"] {
        for _ in 0..3 {
            ids.push((
                model,
                client
                    .choose_arm(fixed(model, vec![0.0, 1.0]))
                    .await
                    .unwrap()
                    .into_inner()
                    .decision_id,
            ));
        }
    }
    tokio::time::sleep(Duration::from_millis(800)).await;
    for (model, id) in &ids {
        let status = client
            .report_reward(reward(model, id, 1.0))
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::NotFound, "{model}");
    }
    let defaulted = client
        .get_model(GetModelRequest {
            model: "defaulted".into(),
        })
        .await
        .unwrap()
        .into_inner();
    let dropped = client
        .get_model(GetModelRequest {
            model: "dropped".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (defaulted.pending_decisions, dropped.pending_decisions),
        (0, 0)
    );
    assert!(
        defaulted.training_steps > 0,
        "the default reward was trained on"
    );
    assert_eq!(
        dropped.training_steps, 0,
        "nothing to train on without a default"
    );
    server.stop().await.unwrap();
}

/// Past the store's capacity the oldest decisions are evicted.
#[tokio::test]
async fn pending_store_is_bounded() {
    let mut config = test_config();
    let mut model = short_window_model("small", None);
    model.pending.reward_window_seconds = 3600.0;
    model.pending.pending_capacity = 3;
    config.models = vec![model];
    let server = TestServer::start(config).await;
    let mut client = server.client().await;
    let mut ids = Vec::new();
    for _ in 0..5 {
        ids.push(
            client
                .choose_arm(fixed("small", vec![0.0, 1.0]))
                .await
                .unwrap()
                .into_inner()
                .decision_id,
        );
    }
    let info = client
        .get_model(GetModelRequest {
            model: "small".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(info.pending_decisions, 3);
    assert_eq!(
        client
            .report_reward(reward("small", &ids[0], 1.0))
            .await
            .unwrap_err()
            .code(),
        Code::NotFound
    );
    client
        .report_reward(reward("small", &ids[4], 1.0))
        .await
        .unwrap();
    server.stop().await.unwrap();
}

/// When the log writer cannot keep up, backpressure reaches the client: its queue fills and
/// further rewards are refused at once with RESOURCE_EXHAUSTED; the refused decisions stay
/// open for a retry. (A slow learner no longer backs up the writer: it falls behind in the
/// log instead.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backpressure_fails_fast() {
    let mut config = test_config();
    config.storage.writer_queue_capacity = 1;
    let mut model = short_window_model("slow", None);
    model.pending.reward_window_seconds = 3600.0;
    // Each reward buys 1000 steps (tens of ms at least) and none are skipped, so 40
    // concurrent reports (sent within a few ms) cannot all fit in queues of one. A small
    // network keeps the worst case (every report accepted) to a few seconds of training.
    model.optimizer.updates_per_reward = 1000;
    model.learner.max_step_backlog = usize::MAX;
    model.network.hidden_layers = vec![32];
    config.models = vec![model];
    let server = TestServer::start(config).await;
    let mut client = server.client().await;
    let mut ids = Vec::new();
    for _ in 0..40 {
        // A decision right after another may find the writer's queue of one still full.
        let decision = retry_while_full(|| {
            let mut client = client.clone();
            async move { client.choose_arm(fixed("slow", vec![0.0, 1.0])).await }
        })
        .await;
        ids.push(decision.decision_id);
    }
    let tasks: Vec<_> = ids
        .iter()
        .map(|id| {
            let (mut client, id) = (client.clone(), id.clone());
            tokio::spawn(async move {
                (
                    id.clone(),
                    client.report_reward(reward("slow", &id, 1.0)).await,
                )
            })
        })
        .collect();
    let mut refused = Vec::new();
    let mut accepted = 0;
    for task in tasks {
        match task.await.unwrap() {
            (_, Ok(_)) => accepted += 1,
            (id, Err(status)) => {
                assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
                assert!(status.message().contains("queue"), "{}", status.message());
                refused.push(id);
            }
        }
    }
    assert!(!refused.is_empty(), "no report was refused");
    let info = client
        .get_model(GetModelRequest {
            model: "slow".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(info.rewards, accepted);
    // A refused decision is still open: the retry is not NOT_FOUND or ALREADY_EXISTS.
    let retry = client.report_reward(reward("slow", &refused[0], 1.0)).await;
    assert!(
        retry
            .as_ref()
            .map_or_else(|s| s.code() == Code::ResourceExhausted, |_| true),
        "{retry:?}"
    );
    server.stop().await.unwrap();
}

/// Fills the log writer's queue (capacity 1) for a while under `on_log_full`, decides `id`
/// while it is full, and returns that call's result together with the server and its data
/// directory. How the queue fills: the learner trains each reward in one slice of
/// `STEPS` steps (hundreds of milliseconds at least) with a queue of 1, so of three rewards
/// reported one after the other the first is training, the second waits in the learner's
/// queue, and the writer blocks handing over the third until that slice ends. One decision then
/// fills the writer's queue, and the next finds it full.
async fn decide_while_log_full(
    on_log_full: OnLogFull,
    id: &str,
) -> (
    Result<tonic::Response<banditd::proto::ChooseArmResponse>, tonic::Status>,
    TestServer,
    tempfile::TempDir,
) {
    let data = tempfile::tempdir().unwrap();
    let mut config = test_config();
    config.storage.data_dir = data.path().to_owned();
    config.storage.writer_queue_capacity = 1;
    config.storage.on_log_full = on_log_full;
    let faults = config.storage.faults.clone();
    let sync_interval_ms = config.storage.sync_interval_ms;
    let mut model = short_window_model("full", None);
    model.pending.reward_window_seconds = 3600.0;
    config.models = vec![model];
    let server = TestServer::start(config).await;
    let mut client = server.client().await;
    let decide = |id: &str| ChooseArmRequest {
        decision_id: id.into(),
        ..fixed("full", vec![0.5, -0.5])
    };
    // With a queue of one, a call right after another may find the writer has not taken the
    // previous operation yet: the setup retries those. Each decision is followed by its
    // reward, whose acknowledgement means the writer has taken everything before it, so the
    // next decision finds the queue empty (under "serve" a full queue would leave it
    // unlogged).
    for i in 0..3 {
        let request = decide(&format!("r-{i}"));
        retry_while_full(|| {
            let (mut client, request) = (client.clone(), request.clone());
            async move { client.choose_arm(request).await }
        })
        .await;
        let request = reward("full", &format!("r-{i}"), 1.0);
        retry_while_full(|| {
            let (mut client, request) = (client.clone(), request.clone());
            async move { client.report_reward(request).await }
        })
        .await;
    }
    // The disk stalls (the writer takes nothing more once its idle wait, at most
    // `sync_interval_ms`, ends): one decision fills the queue.
    faults
        .stall
        .store(true, std::sync::atomic::Ordering::Release);
    tokio::time::sleep(Duration::from_millis(sync_interval_ms + 100)).await;
    client.choose_arm(decide("queued")).await.unwrap();
    let result = client.choose_arm(decide(id)).await;
    // The disk recovers.
    faults
        .stall
        .store(false, std::sync::atomic::Ordering::Release);
    (result, server, data)
}

/// Calls `call` until it is not RESOURCE_EXHAUSTED (every 10 ms, for at most 10 s); panics on
/// any other error.
async fn retry_while_full<T, F>(mut call: impl FnMut() -> F) -> T
where
    F: std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>>,
{
    for _ in 0..1000 {
        match call().await {
            Ok(response) => return response.into_inner(),
            Err(s) if s.code() == Code::ResourceExhausted => {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            Err(s) => panic!("{s:?}"),
        }
    }
    panic!("still RESOURCE_EXHAUSTED after 10 s");
}

/// The decision ids the stopped server's log holds for model "full".
fn logged_ids(data: &std::path::Path) -> Vec<String> {
    let mut config = test_config();
    config.storage.data_dir = data.to_owned();
    banditd::storage::rows(&config.storage.data_dir, &["full".to_owned()])
        .unwrap()
        .into_iter()
        .map(|row| row.decision_id)
        .collect()
}

/// `on_log_full = "reject"` (the default): a decision that cannot be logged is refused with
/// RESOURCE_EXHAUSTED and retry info, is not stored (its reward is NOT_FOUND), and a retry of
/// its id once the queue drains is a new, logged decision. Every decision served is logged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn log_full_rejects_decisions() {
    assert_eq!(
        banditd::config::StorageConfig::default().on_log_full,
        OnLogFull::Reject
    );
    let (result, server, data) = decide_while_log_full(OnLogFull::Reject, "refused").await;
    let status = result.expect_err("decided while the log queue was full");
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert!(status.message().contains("log writer queue"), "{status:?}");
    assert!(
        status
            .get_details_retry_info()
            .and_then(|r| r.retry_delay)
            .is_some_and(|d| d > Duration::ZERO),
        "no retry delay in {status:?}"
    );
    let mut client = server.client().await;
    assert_eq!(
        client
            .report_reward(reward("full", "refused", 1.0))
            .await
            .unwrap_err()
            .code(),
        Code::NotFound
    );
    // Retried with backoff until the queue has drained: then it is decided and logged.
    let retry = ChooseArmRequest {
        decision_id: "refused".into(),
        ..fixed("full", vec![0.5, -0.5])
    };
    let mut decided = None;
    for _ in 0..300 {
        match client.choose_arm(retry.clone()).await {
            Ok(r) => {
                decided = Some(r.into_inner());
                break;
            }
            Err(s) => assert_eq!(s.code(), Code::ResourceExhausted, "{s:?}"),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(decided.expect("retry decided").decision_id, "refused");
    server.stop().await.unwrap();
    let mut logged = logged_ids(data.path());
    logged.sort();
    assert_eq!(logged, ["queued", "r-0", "r-1", "r-2", "refused"]);
}

/// `on_log_full = "serve"`: the decision is answered anyway and is missing from the log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn log_full_serves_unlogged_decisions() {
    let (result, server, data) = decide_while_log_full(OnLogFull::Serve, "unlogged").await;
    assert_eq!(result.expect("served").into_inner().decision_id, "unlogged");
    server.stop().await.unwrap();
    let mut logged = logged_ids(data.path());
    logged.sort();
    assert_eq!(logged, ["queued", "r-0", "r-1", "r-2"]);
}

/// Many tasks on several connections decide and report concurrently; every call succeeds
/// and the counters add up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_choose_and_report() {
    let server = TestServer::start(test_config()).await;
    let mut connections = Vec::new();
    for _ in 0..4 {
        connections.push(server.client().await);
    }
    let mut tasks = Vec::new();
    for t in 0..32 {
        let mut client = connections[t % 4].clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..50 {
                let x = (t * 50 + i) as f32 / 1600.0;
                let d = client
                    .choose_arm(fixed("wheel", vec![x, 1.0 - x]))
                    .await
                    .unwrap()
                    .into_inner();
                client
                    .report_reward(reward("wheel", &d.decision_id, f64::from(x)))
                    .await
                    .unwrap();
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    let mut client = server.client().await;
    let info = client
        .get_model(GetModelRequest {
            model: "wheel".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!((info.decisions, info.rewards), (1600, 1600));
    server.stop().await.unwrap();
}

/// Server reflection lists the bandit service and health, so grpcurl and ghz need no proto.
#[tokio::test]
async fn reflection_lists_services() {
    use tonic_reflection::pb::v1::{
        ServerReflectionRequest, server_reflection_client::ServerReflectionClient,
        server_reflection_request::MessageRequest, server_reflection_response::MessageResponse,
    };
    let server = TestServer::start(test_config()).await;
    let channel = tonic::transport::Channel::from_shared(server.url())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut client = ServerReflectionClient::new(channel);
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut responses = client
        .server_reflection_info(tokio_stream::iter([request]))
        .await
        .unwrap()
        .into_inner();
    let response = responses.message().await.unwrap().unwrap();
    let Some(MessageResponse::ListServicesResponse(list)) = response.message_response else {
        panic!("{response:?}")
    };
    let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    for expected in ["banditd.v1.BanditService", "grpc.health.v1.Health"] {
        assert!(
            names.iter().any(|n| n == expected),
            "{expected} missing from {names:?}"
        );
    }
    drop(responses);
    server.stop().await.unwrap();
}

/// A decision above `limits.max_inline_work` runs on the blocking pool and answers exactly
/// what the same decision inline answers (same seed, same draws): arm, scores, propensity.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heavy_decisions_off_the_reactor_decide_the_same() {
    let mut answers = Vec::new();
    for max_inline_work in [usize::MAX, 0] {
        let mut config = test_config();
        config.limits.max_inline_work = max_inline_work;
        config.limits.max_blocking_decisions = 1;
        let server = TestServer::start(config).await;
        let mut client = server.client().await;
        let request = ChooseArmRequest {
            propensity_samples: 50,
            explain_samples: 20,
            ..fixed("wheel", vec![0.3, -0.4])
        };
        let d = client.choose_arm(request).await.unwrap().into_inner();
        answers.push((
            d.arm_id,
            d.scores
                .iter()
                .map(|s| (s.score, s.posterior_mean, s.posterior_std))
                .collect::<Vec<_>>(),
            d.propensity,
        ));
        server.stop().await.unwrap();
    }
    assert_eq!(answers[0], answers[1]);
}
