//! The log under faults: a disk that stops taking writes and comes back, retries that must
//! not be acknowledged before what they repeat is durable, a log the server may not open,
//! retried decision ids that ask something else, and ids of closed decisions used again.

mod common;

use std::{sync::atomic::Ordering, time::Duration};

use banditd::{Config, proto::ChooseArmRequest};
use common::{TestServer, fixed, reward, test_config};
use tonic::{Code, transport::Channel};

type Client = banditd::proto::bandit_service_client::BanditServiceClient<Channel>;
use tonic_health::pb::health_check_response::ServingStatus;

/// GetModel of the `wheel` model.
async fn wheel_info(client: &Client) -> banditd::proto::ModelInfo {
    client
        .clone()
        .get_model(banditd::proto::GetModelRequest {
            model: "wheel".into(),
        })
        .await
        .unwrap()
        .into_inner()
}

/// Polls `f` every 20 ms for up to 10 s until it is true.
async fn eventually(what: &str, mut f: impl AsyncFnMut() -> bool) {
    for _ in 0..500 {
        if f().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("not within 10 s: {what}");
}

/// A full disk: rewards and decisions are refused with UNAVAILABLE (no decision is served
/// that is not logged), health turns NOT_SERVING; once the disk takes writes again the
/// writer notices by itself, health turns SERVING and the same requests succeed, and a
/// reward refused during the outage can be reported again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_disk_refuses_then_recovers_by_itself() {
    let mut config = test_config();
    let faults = config.storage.faults.clone();
    config.storage.sync_interval_ms = 20;
    let server = TestServer::start(config).await;
    let mut client = server.client().await;
    let before = client
        .choose_arm(fixed("wheel", vec![0.1, 0.2]))
        .await
        .unwrap()
        .into_inner();
    client
        .report_reward(reward("wheel", &before.decision_id, 1.0))
        .await
        .unwrap();
    let open = client
        .choose_arm(fixed("wheel", vec![0.3, 0.4]))
        .await
        .unwrap()
        .into_inner();

    faults.fail_writes.store(true, Ordering::Release);
    // The first write after the disk fills fails: the reward is refused, not acknowledged.
    let err = client
        .report_reward(reward("wheel", &open.decision_id, 2.0))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unavailable, "{err:?}");
    eventually("health NOT_SERVING", async || {
        server.health().await == ServingStatus::NotServing
    })
    .await;
    let err = client
        .choose_arm(fixed("wheel", vec![0.5, 0.6]))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unavailable, "{err:?}");

    faults.fail_writes.store(false, Ordering::Release);
    eventually("health SERVING again", async || {
        server.health().await == ServingStatus::Serving
    })
    .await;
    let response = client
        .report_reward(reward("wheel", &open.decision_id, 2.0))
        .await
        .unwrap()
        .into_inner();
    assert!(
        !response.duplicate,
        "the refused reward must be taken as a first report"
    );
    client
        .choose_arm(fixed("wheel", vec![0.5, 0.6]))
        .await
        .unwrap();
    server.stop().await.unwrap();
}

/// A retried reward that arrives while the first report's write is still pending is not
/// answered before that write is durable; if the write fails, the retry gets the failure,
/// not `duplicate = true` for a reward that was never stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retried_reward_waits_for_the_first_write() {
    let config = test_config();
    let faults = config.storage.faults.clone();
    let server = TestServer::start(config).await;
    let mut client = server.client().await;
    let decision = client
        .choose_arm(fixed("wheel", vec![0.1, 0.2]))
        .await
        .unwrap()
        .into_inner();
    // The disk stalls: the first report waits in the writer's queue.
    faults.stall.store(true, Ordering::Release);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let first = {
        let mut client = client.clone();
        let id = decision.decision_id.clone();
        tokio::spawn(async move { client.report_reward(reward("wheel", &id, 1.0)).await })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    let retry = {
        let mut client = client.clone();
        let id = decision.decision_id.clone();
        tokio::spawn(async move { client.report_reward(reward("wheel", &id, 1.0)).await })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !retry.is_finished(),
        "the retry was answered before the first report's write was durable"
    );
    // The write then fails (the disk filled while stalled).
    faults.fail_writes.store(true, Ordering::Release);
    faults.stall.store(false, Ordering::Release);
    let first = first.await.unwrap().unwrap_err();
    assert_eq!(first.code(), Code::Unavailable, "{first:?}");
    match retry.await.unwrap() {
        Ok(r) => panic!(
            "the retry was acknowledged (duplicate = {}) though nothing was stored",
            r.into_inner().duplicate
        ),
        Err(e) => assert_eq!(e.code(), Code::Unavailable, "{e:?}"),
    }
    faults.fail_writes.store(false, Ordering::Release);
    eventually(
        "the reward is accepted once the disk is back",
        async || match client
            .report_reward(reward("wheel", &decision.decision_id, 1.0))
            .await
        {
            Ok(r) => !r.into_inner().duplicate,
            Err(e) => {
                assert_eq!(e.code(), Code::Unavailable, "{e:?}");
                false
            }
        },
    )
    .await;
    server.stop().await.unwrap();
}

/// A retry of a decision id with other candidates, exclusions or context is refused with
/// FAILED_PRECONDITION naming the id, instead of answering the first request's arm; the
/// same request again still gets the stored decision.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retried_id_with_another_request_is_refused() {
    let server = TestServer::start(test_config()).await;
    let mut client = server.client().await;
    let request = ChooseArmRequest {
        decision_id: "same-id".into(),
        ..fixed("wheel", vec![0.1, 0.2])
    };
    let first = client
        .choose_arm(request.clone())
        .await
        .unwrap()
        .into_inner();
    let again = client
        .choose_arm(request.clone())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(again.arm_id, first.arm_id);
    let excluding = ChooseArmRequest {
        excluded_arm_ids: vec![first.arm_id.clone()],
        ..request.clone()
    };
    let other_context = ChooseArmRequest {
        context: vec![0.9, 0.2],
        ..request.clone()
    };
    for other in [excluding, other_context] {
        let err = client.choose_arm(other).await.unwrap_err();
        assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");
        assert!(
            err.message().starts_with("decision_id:"),
            "{}",
            err.message()
        );
        assert!(err.message().contains("same-id"), "{}", err.message());
    }
    server.stop().await.unwrap();
}

/// A client-made id whose window has closed is refused with ALREADY_EXISTS while its
/// decision is in the retained log, before and after a restart (the used ids are rebuilt
/// from the log), instead of a second decision under the same id; a fresh id is served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn id_of_a_closed_decision_is_not_reused() {
    let data = tempfile::tempdir().unwrap();
    let mut config: Config = test_config();
    config.storage.data_dir = data.path().to_owned();
    config.models[0].pending.reward_window_seconds = 0.2;
    let request = ChooseArmRequest {
        decision_id: "campaign-7/user-1".into(),
        ..fixed("wheel", vec![0.1, 0.2])
    };
    let server = TestServer::start(config.clone()).await;
    let mut client = server.client().await;
    client.choose_arm(request.clone()).await.unwrap();
    eventually("the window closed", async || {
        wheel_info(&client).await.pending_decisions == 0
    })
    .await;
    let refused = |err: tonic::Status| {
        assert_eq!(err.code(), Code::AlreadyExists, "{err:?}");
        assert!(
            err.message().starts_with("decision_id:")
                && err.message().contains("campaign-7/user-1"),
            "{}",
            err.message()
        );
    };
    refused(client.choose_arm(request.clone()).await.unwrap_err());
    server.stop().await.unwrap();

    let server = TestServer::start(config).await;
    let mut client = server.client().await;
    refused(client.choose_arm(request.clone()).await.unwrap_err());
    let fresh = ChooseArmRequest {
        decision_id: "campaign-7/user-2".into(),
        ..request
    };
    client.choose_arm(fresh).await.unwrap();
    server.stop().await.unwrap();
}

/// Checkpoints are written by examples as well as by time: with an hour's interval and one
/// checkpoint per 40 examples, a checkpoint covering at least 40 rewards exists while the
/// server is still running (a crash now would not retrain the whole log on restart).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn checkpoint_follows_the_example_count_before_the_interval() {
    let data = tempfile::tempdir().unwrap();
    let mut config: Config = test_config();
    config.storage.data_dir = data.path().to_owned();
    config.storage.checkpoint_interval_secs = 3_600;
    config.storage.checkpoint_every_examples = 40;
    let widths = config.models[0].layer_widths();
    let server = TestServer::start(config).await;
    let mut client = server.client().await;
    for i in 0..60 {
        let d = client
            .choose_arm(fixed("wheel", vec![0.01 * i as f32, 0.2]))
            .await
            .unwrap()
            .into_inner();
        client
            .report_reward(reward("wheel", &d.decision_id, 1.0))
            .await
            .unwrap();
    }
    eventually("a checkpoint covering 40 rewards", async || {
        let (ck, _) =
            banditd::storage::checkpoint::load_latest(data.path(), "wheel", &widths).unwrap();
        ck.is_some_and(|ck| ck.meta.reward_n >= 40)
    })
    .await;
    server.stop().await.unwrap();
}

/// A log segment the server may not read (another user's file) stops the start with an
/// error naming the file, and nothing is moved aside or cut: only verified corruption is.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreadable_log_stops_the_start_naming_the_file() {
    let data = tempfile::tempdir().unwrap();
    let mut config: Config = test_config();
    config.storage.data_dir = data.path().to_owned();
    let server = TestServer::start(config.clone()).await;
    let mut client = server.client().await;
    client
        .choose_arm(fixed("wheel", vec![0.1, 0.2]))
        .await
        .unwrap();
    server.stop().await.unwrap();
    // A directory where a segment should be a file: open succeeds, reading fails with an
    // I/O error (EISDIR), which no permission setting can hide from a root test runner.
    let segment = std::fs::read_dir(data.path().join("log"))
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .max()
        .unwrap();
    let bytes = std::fs::read(&segment).unwrap();
    std::fs::remove_file(&segment).unwrap();
    std::fs::create_dir(&segment).unwrap();
    let err = tokio::time::timeout(
        Duration::from_secs(30),
        TestServer::spawn(config.clone()).await.join(),
    )
    .await
    .expect("startup neither failed nor finished")
    .expect_err("a log segment that cannot be read was accepted")
    .to_string();
    assert!(
        err.contains(&segment.display().to_string()),
        "the error does not name the file: {err}"
    );
    assert!(
        segment.is_dir(),
        "the unreadable segment was moved or removed"
    );
    // Put back, it is read as before.
    std::fs::remove_dir(&segment).unwrap();
    std::fs::write(&segment, bytes).unwrap();
    let server = TestServer::start(config).await;
    server.stop().await.unwrap();
}

/// `banditd export` says what is wrong instead of printing nothing: a missing data directory
/// (not created), a directory without a log, a model with no decisions in the log; and it
/// reads a directory whose server is still running.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn export_errors_say_what_is_wrong() {
    let export = |dir: &std::path::Path, model: Option<&str>| {
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_banditd"));
        cmd.arg("--data-dir").arg(dir).arg("export");
        if let Some(m) = model {
            cmd.args(["--model", m]);
        }
        cmd.output().expect("cannot run banditd export")
    };
    let root = tempfile::tempdir().unwrap();
    let missing = root.path().join("nothing-here");
    let out = export(&missing, None);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("does not exist"));
    assert!(!missing.exists(), "export created the missing directory");
    let out = export(root.path(), None);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("holds no log"));

    let mut config: Config = test_config();
    config.storage.data_dir = root.path().join("data");
    let server = TestServer::start(config.clone()).await;
    let mut client = server.client().await;
    let d = client
        .choose_arm(fixed("wheel", vec![0.1, 0.2]))
        .await
        .unwrap()
        .into_inner();
    client
        .report_reward(reward("wheel", &d.decision_id, 1.0))
        .await
        .unwrap();
    // The server is running: export reads what is committed.
    let out = export(&config.storage.data_dir, Some("wheel"));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let line = String::from_utf8(out.stdout).unwrap();
    assert!(
        line.contains(&d.decision_id) && line.contains("\"reward\":1.0"),
        "{line}"
    );
    let out = export(&config.storage.data_dir, Some("no-such-model"));
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no-such-model"));
    server.stop().await.unwrap();
}

/// GetModel's counters survive a restart: decisions and rewards are counted from the log,
/// training steps from the checkpoint; `pending_decisions` counts open windows and
/// `awaiting_reward` those of them without a reward.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn model_counters_survive_a_restart() {
    let data = tempfile::tempdir().unwrap();
    let mut config: Config = test_config();
    config.storage.data_dir = data.path().to_owned();
    let server = TestServer::start(config.clone()).await;
    let mut client = server.client().await;
    for i in 0..3 {
        let d = client
            .choose_arm(fixed("wheel", vec![0.1 * i as f32, 0.2]))
            .await
            .unwrap()
            .into_inner();
        if i < 2 {
            client
                .report_reward(reward("wheel", &d.decision_id, 1.0))
                .await
                .unwrap();
        }
    }
    let before = wheel_info(&client).await;
    assert_eq!((before.decisions, before.rewards), (3, 2));
    assert_eq!((before.pending_decisions, before.awaiting_reward), (3, 1));
    server.stop().await.unwrap();

    let server = TestServer::start(config).await;
    let client = server.client().await;
    let after = wheel_info(&client).await;
    assert_eq!((after.decisions, after.rewards), (3, 2), "counts restarted");
    assert!(
        after.training_steps >= before.training_steps && after.training_steps > 0,
        "training steps went from {} to {}",
        before.training_steps,
        after.training_steps
    );
    assert_eq!((after.pending_decisions, after.awaiting_reward), (3, 1));
    server.stop().await.unwrap();
}
