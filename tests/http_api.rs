//! The HTTP/JSON face against a real server (gRPC and HTTP on 127.0.0.1 port 0): every
//! route's happy path, every error with its HTTP status and body, tokens where gRPC needs
//! them, the body limit, the same decision through JSON and gRPC, and the OpenAPI document
//! against the routes and the proto's JSON.

mod common;

use std::{
    net::SocketAddr,
    sync::{Arc, atomic::Ordering},
    time::Duration,
};

use banditd::{
    Config,
    config::{ClusterConfig, DurabilityMode, ModelConfig, ModelKind, Secret},
    proto as pb,
};
use common::{TestServer, test_config};
use http_body_util::{BodyExt, Full};
use hyper::{Request, body::Bytes, header::HeaderMap};
use hyper_util::{
    client::legacy::{Client, connect::HttpConnector},
    rt::TokioExecutor,
};
use serde_json::{Value, json};
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};

/// A plain HTTP/1.1 client for one server.
struct Http {
    client: Client<HttpConnector, Full<Bytes>>,
    base: String,
}

/// A response: status, headers, body as JSON (`Null` when empty).
#[derive(Debug)]
struct Answer {
    status: u16,
    headers: HeaderMap,
    body: Value,
}

impl Answer {
    /// Asserts an error answer: HTTP status, code name, and (if given) the field violation.
    fn assert_error(&self, status: u16, code: &str, field: Option<&str>) {
        assert_eq!(self.status, status, "{self:?}");
        assert_eq!(self.body["code"], code, "{self:?}");
        assert!(
            self.body["message"].as_str().is_some_and(|m| !m.is_empty()),
            "{self:?}"
        );
        let violations = self.body["details"]
            .as_array()
            .unwrap()
            .iter()
            .find(|d| d["@type"] == "type.googleapis.com/google.rpc.BadRequest");
        match field {
            Some(field) => {
                let violation = &violations.expect("a BadRequest detail")["fieldViolations"][0];
                assert_eq!(violation["field"], field, "{self:?}");
                assert!(
                    violation["description"]
                        .as_str()
                        .is_some_and(|d| !d.is_empty())
                );
            }
            None => assert!(violations.is_none(), "{self:?}"),
        }
    }
}

impl Http {
    fn new(addr: SocketAddr) -> Self {
        Self {
            client: Client::builder(TokioExecutor::new()).build_http(),
            base: format!("http://{addr}"),
        }
    }

    async fn call(&self, method: &str, path: &str, token: Option<&str>, body: &[u8]) -> Answer {
        let mut request = Request::builder()
            .method(method)
            .uri(format!("{}{path}", self.base))
            .header("content-type", "application/json");
        if let Some(token) = token {
            request = request.header("authorization", format!("Bearer {token}"));
        }
        let request = request
            .body(Full::new(Bytes::copy_from_slice(body)))
            .unwrap();
        let response = self.client.request(request).await.unwrap();
        let (parts, body) = response.into_parts();
        let bytes = body.collect().await.unwrap().to_bytes();
        let body = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes)
                .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&bytes)))
        };
        Answer {
            status: parts.status.as_u16(),
            headers: parts.headers,
            body,
        }
    }

    async fn get(&self, path: &str) -> Answer {
        self.call("GET", path, None, b"").await
    }

    async fn post(&self, path: &str, body: &Value) -> Answer {
        self.call("POST", path, None, body.to_string().as_bytes())
            .await
    }
}

async fn start(config: Config) -> (TestServer, Http) {
    let (server, http) = TestServer::start_with_http(config).await;
    (server, Http::new(http))
}

/// ListModels and GetModel in the proto3 JSON mapping: camelCase names, enums by name,
/// 64-bit integers as strings, every field present.
#[tokio::test]
async fn list_and_get_models() {
    let (server, http) = start(test_config()).await;
    let list = http.get("/v1/models").await;
    assert_eq!(list.status, 200, "{list:?}");
    assert_eq!(list.headers["content-type"], "application/json");
    let names: Vec<&str> = list.body["models"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["wheel", "items"]);
    let wheel = http.get("/v1/models/wheel").await;
    assert_eq!(wheel.status, 200, "{wheel:?}");
    assert_eq!(wheel.body["kind"], "MODEL_KIND_FIXED_ARMS");
    assert_eq!(wheel.body["armIds"], json!(["0", "1", "2", "3", "4"]));
    assert_eq!(wheel.body["contextDim"], 2);
    assert_eq!(wheel.body["hiddenLayers"], json!([100, 100]));
    assert_eq!(wheel.body["seed"], "42");
    assert_eq!(wheel.body["decisions"], "0", "defaults are written too");
    assert_eq!(wheel.body, list.body["models"][0]);
    let items = http.get("/v1/models/items").await;
    assert_eq!(items.body["kind"], "MODEL_KIND_PER_ARM_FEATURES");
    assert_eq!(items.body["armFeatureDim"], 8);
    http.get("/v1/models/nope")
        .await
        .assert_error(404, "NOT_FOUND", None);
    server.stop().await.unwrap();
}

/// Decide and reward for both model kinds; a retry of the reward is a duplicate, a
/// different reward a conflict (409); a client decision id is idempotent; the counters move.
#[tokio::test]
async fn choose_and_reward_round_trip() {
    let (server, http) = start(test_config()).await;
    let decision = http
        .post("/v1/models/wheel:choose", &json!({"context": [0.1, 0.2]}))
        .await;
    assert_eq!(decision.status, 200, "{decision:?}");
    let id = decision.body["decisionId"].as_str().unwrap().to_owned();
    let arms: Vec<&str> = decision.body["scores"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["armId"].as_str().unwrap())
        .collect();
    assert_eq!(arms, ["0", "1", "2", "3", "4"]);
    assert!(arms.contains(&decision.body["armId"].as_str().unwrap()));
    assert!(decision.body["modelVersion"].is_string());

    // The proto's own field names are accepted too, and a body may repeat the path's model.
    let subset = http
        .post(
            "/v1/models/wheel:choose",
            &json!({"model": "wheel", "context": [0.1, 0.2],
                    "candidates": [{"id": "3"}, {"id": "1"}, {"id": "4"}],
                    "excluded_arm_ids": ["4"], "explainSamples": 10}),
        )
        .await;
    assert_eq!(subset.status, 200, "{subset:?}");
    let scores = subset.body["scores"].as_array().unwrap();
    assert_eq!(scores.len(), 2);
    assert!(scores.iter().all(|s| s["posteriorStd"].is_number()));

    let reward = |reward: f64| json!({"decisionId": id, "reward": reward});
    let first = http.post("/v1/models/wheel:reward", &reward(1.5)).await;
    assert_eq!(
        (first.status, &first.body),
        (200, &json!({"duplicate": false}))
    );
    let again = http.post("/v1/models/wheel:reward", &reward(1.5)).await;
    assert_eq!(
        (again.status, &again.body),
        (200, &json!({"duplicate": true}))
    );
    http.post("/v1/models/wheel:reward", &reward(0.0))
        .await
        .assert_error(409, "ALREADY_EXISTS", None);

    let items = http
        .post(
            "/v1/models/items:choose",
            &json!({"context": vec![0.0; 8], "decisionId": "order-1",
                    "candidates": [{"id": "a", "features": vec![0.5; 8]},
                                   {"id": "b", "features": vec![-0.5; 8]}]}),
        )
        .await;
    assert_eq!(items.status, 200, "{items:?}");
    assert_eq!(items.body["decisionId"], "order-1");
    let retry = http
        .post(
            "/v1/models/items:choose",
            &json!({"context": vec![0.0; 8], "decisionId": "order-1",
                    "candidates": [{"id": "a", "features": vec![0.5; 8]},
                                   {"id": "b", "features": vec![-0.5; 8]}]}),
        )
        .await;
    assert_eq!(retry.body, items.body, "a retry answers the same decision");
    // The same id with another request is FAILED_PRECONDITION, 400.
    http.post(
        "/v1/models/items:choose",
        &json!({"context": vec![1.0; 8], "decisionId": "order-1",
                "candidates": [{"id": "a", "features": vec![0.5; 8]}]}),
    )
    .await
    .assert_error(400, "FAILED_PRECONDITION", None);
    let ok = http
        .post(
            "/v1/models/items:reward",
            &json!({"decisionId": "order-1", "reward": 1, "regret": 0.5}),
        )
        .await;
    assert_eq!(ok.status, 200, "{ok:?}");

    let wheel = http.get("/v1/models/wheel").await;
    assert_eq!(
        (&wheel.body["decisions"], &wheel.body["rewards"]),
        (&json!("2"), &json!("1"))
    );
    server.stop().await.unwrap();
}

/// A POST path and body, and the HTTP status, code and field violation it must answer.
type Case<'a> = (&'a str, &'a [u8], u16, &'a str, Option<&'a str>);

/// Every malformed request: 400 INVALID_ARGUMENT with the field as a BadRequest violation,
/// or the status of its code; unknown routes 404, wrong methods 405.
#[tokio::test]
async fn errors_have_status_code_and_field() {
    let (server, http) = start(test_config()).await;
    let cases: Vec<Case<'_>> = vec![
        // The engine's validation, as over gRPC.
        (
            "/v1/models/wheel:choose",
            br#"{"context": [0.0]}"#,
            400,
            "INVALID_ARGUMENT",
            Some("context"),
        ),
        (
            "/v1/models/items:choose",
            br#"{"context": [0,0,0,0,0,0,0,0], "candidates": [{"id": "a", "features": [1]}]}"#,
            400,
            "INVALID_ARGUMENT",
            Some("candidates[0].features"),
        ),
        (
            "/v1/models/nope:choose",
            br#"{"context": [0, 0]}"#,
            404,
            "NOT_FOUND",
            None,
        ),
        (
            "/v1/models/wheel:reward",
            br#"{"decisionId": "never", "reward": 1}"#,
            404,
            "NOT_FOUND",
            None,
        ),
        (
            "/v1/models/wheel:reward",
            br#"{"reward": 1}"#,
            400,
            "INVALID_ARGUMENT",
            Some("decision_id"),
        ),
        // What only JSON can get wrong: the parser names the field.
        (
            "/v1/models/wheel:choose",
            br#"{"context": [0, 0], "excludedArmIdz": []}"#,
            400,
            "INVALID_ARGUMENT",
            Some("excludedArmIdz"),
        ),
        (
            "/v1/models/wheel:choose",
            br#"{"context": [0, 0], "candidates": [{"id": "1", "weight": 2}]}"#,
            400,
            "INVALID_ARGUMENT",
            Some("candidates[0].weight"),
        ),
        (
            "/v1/models/wheel:choose",
            br#"{"context": "0, 0"}"#,
            400,
            "INVALID_ARGUMENT",
            Some("context"),
        ),
        (
            "/v1/models/wheel:reward",
            br#"{"decisionId": "d", "reward": "lots"}"#,
            400,
            "INVALID_ARGUMENT",
            Some("reward"),
        ),
        (
            "/v1/models/wheel:choose",
            br#"{"context": [0, 0]"#,
            400,
            "INVALID_ARGUMENT",
            Some("body"),
        ),
        (
            "/v1/models/wheel:choose",
            br#"{"context": [0, 0]} trailing"#,
            400,
            "INVALID_ARGUMENT",
            Some("body"),
        ),
        (
            "/v1/models/wheel:choose",
            b"",
            400,
            "INVALID_ARGUMENT",
            Some("body"),
        ),
        // The body's model must be the path's.
        (
            "/v1/models/wheel:choose",
            br#"{"model": "items", "context": [0, 0]}"#,
            400,
            "INVALID_ARGUMENT",
            Some("model"),
        ),
        // No such verb or route.
        ("/v1/models/wheel:explode", b"{}", 404, "NOT_FOUND", None),
        ("/v1/models/wheel", b"{}", 404, "NOT_FOUND", None),
        ("/v2/models", b"{}", 404, "NOT_FOUND", None),
    ];
    for (path, body, status, code, field) in cases {
        let answer = http.call("POST", path, None, body).await;
        println!("{path} {}: {answer:?}", String::from_utf8_lossy(body));
        answer.assert_error(status, code, field);
    }
    for (method, path) in [("DELETE", "/v1/models"), ("PUT", "/v1/models/wheel")] {
        http.call(method, path, None, b"")
            .await
            .assert_error(405, "UNIMPLEMENTED", None);
    }
    server.stop().await.unwrap();
}

/// A model spec in the proto3 JSON mapping: two arms, 2-d context, one hidden layer of 8.
fn spec(name: &str) -> Value {
    json!({
        "name": name,
        "kind": "MODEL_KIND_FIXED_ARMS",
        "contextDim": 2,
        "arms": ["a", "b"],
        "hiddenLayers": [8],
        "settings": ["policy=\"greedy\""],
    })
}

/// The admin calls over HTTP/JSON, through the same API as gRPC: create (a retry answers the
/// model; another spec under the name is 409), update (a bad value names the field, a shape
/// change is FAILED_PRECONDITION naming it, a body naming another model is refused), list
/// checkpoints and roll back (an unknown version is 404), delete (404 from then on); each
/// needs an admin token.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_calls_over_http() {
    let mut config = test_config();
    config.auth.tokens = vec![Secret("user-t".into())];
    config.auth.admin_tokens = vec![Secret("admin-t".into())];
    let (server, http) = start(config).await;
    let admin = |method: &'static str, path: &'static str, body: Value| {
        let http = &http;
        async move {
            let body = if body.is_null() {
                Vec::new()
            } else {
                body.to_string().into_bytes()
            };
            http.call(method, path, Some("admin-t"), &body).await
        }
    };
    let create = json!({"spec": spec("ads")});
    let created = admin("POST", "/v1/models", create.clone()).await;
    assert_eq!(created.status, 200, "{created:?}");
    assert_eq!(created.body["name"], "ads");
    assert_eq!(created.body["policy"], "greedy");
    assert_eq!(
        admin("POST", "/v1/models", create.clone()).await.status,
        200
    );
    let mut other = spec("ads");
    other["contextDim"] = json!(3);
    admin("POST", "/v1/models", json!({"spec": other}))
        .await
        .assert_error(409, "ALREADY_EXISTS", None);
    let mut bad = spec("bad");
    bad["settings"] = json!(["learning_rate=-1"]);
    admin("POST", "/v1/models", json!({"spec": bad}))
        .await
        .assert_error(400, "INVALID_ARGUMENT", Some("learning_rate"));
    for (method, path) in [
        ("POST", "/v1/models"),
        ("PATCH", "/v1/models/ads"),
        ("DELETE", "/v1/models/ads"),
        ("GET", "/v1/models/ads/checkpoints"),
        ("POST", "/v1/models/ads:rollback"),
    ] {
        http.call(method, path, Some("user-t"), b"{}")
            .await
            .assert_error(403, "PERMISSION_DENIED", None);
    }

    let updated = admin(
        "PATCH",
        "/v1/models/ads",
        json!({"settings": ["learning_rate=0.01"]}),
    )
    .await;
    assert_eq!(updated.status, 200, "{updated:?}");
    assert_eq!(updated.body["learningRate"], 0.01);
    admin(
        "PATCH",
        "/v1/models/ads",
        json!({"settings": ["learning_rate=0"]}),
    )
    .await
    .assert_error(400, "INVALID_ARGUMENT", Some("learning_rate"));
    let shape = admin(
        "PATCH",
        "/v1/models/ads",
        json!({"settings": ["context_dim=3"]}),
    )
    .await;
    shape.assert_error(400, "FAILED_PRECONDITION", None);
    assert!(
        shape.body["message"]
            .as_str()
            .unwrap()
            .contains("context_dim"),
        "{shape:?}"
    );
    admin(
        "PATCH",
        "/v1/models/ads",
        json!({"model": "wheel", "settings": []}),
    )
    .await
    .assert_error(400, "INVALID_ARGUMENT", Some("model"));
    admin("PATCH", "/v1/models/nope", json!({"settings": []}))
        .await
        .assert_error(404, "NOT_FOUND", None);

    let listed = admin("GET", "/v1/models/ads/checkpoints", Value::Null).await;
    assert_eq!(listed.status, 200, "{listed:?}");
    let version = listed.body["checkpoints"][0]["version"].clone();
    assert!(version.is_string(), "{listed:?}");
    let rolled = admin(
        "POST",
        "/v1/models/ads:rollback",
        json!({"version": version}),
    )
    .await;
    assert_eq!(rolled.status, 200, "{rolled:?}");
    admin(
        "POST",
        "/v1/models/ads:rollback",
        json!({"version": "999999"}),
    )
    .await
    .assert_error(404, "NOT_FOUND", None);

    let deleted = admin("DELETE", "/v1/models/ads", Value::Null).await;
    assert_eq!((deleted.status, &deleted.body), (200, &json!({})));
    admin("GET", "/v1/models/ads", Value::Null)
        .await
        .assert_error(404, "NOT_FOUND", None);
    admin("DELETE", "/v1/models/ads", json!({"dropCheckpoints": true}))
        .await
        .assert_error(404, "NOT_FOUND", None);
    server.stop().await.unwrap();
}

/// With tokens, the HTTP face asks what gRPC asks: a user token for decisions and rewards,
/// an admin token for the model descriptions; 401 carries WWW-Authenticate.
#[tokio::test]
async fn tokens_as_grpc() {
    let mut config = test_config();
    config.auth.tokens = vec![Secret("user-t".into())];
    config.auth.admin_tokens = vec![Secret("admin-t".into())];
    let (server, http) = start(config).await;
    let choose = br#"{"context": [0.1, 0.2]}"#;
    let none = http
        .call("POST", "/v1/models/wheel:choose", None, choose)
        .await;
    none.assert_error(401, "UNAUTHENTICATED", None);
    assert_eq!(none.headers["www-authenticate"], "Bearer");
    http.call("POST", "/v1/models/wheel:choose", Some("wrong"), choose)
        .await
        .assert_error(401, "UNAUTHENTICATED", None);
    for token in ["user-t", "admin-t"] {
        let answer = http
            .call("POST", "/v1/models/wheel:choose", Some(token), choose)
            .await;
        assert_eq!(answer.status, 200, "{token}: {answer:?}");
    }
    for path in ["/v1/models", "/v1/models/wheel"] {
        http.call("GET", path, None, b"")
            .await
            .assert_error(401, "UNAUTHENTICATED", None);
        http.call("GET", path, Some("user-t"), b"")
            .await
            .assert_error(403, "PERMISSION_DENIED", None);
        assert_eq!(
            http.call("GET", path, Some("admin-t"), b"").await.status,
            200
        );
    }
    // Probing for routes needs a token too.
    http.call("GET", "/v1/secret", None, b"")
        .await
        .assert_error(401, "UNAUTHENTICATED", None);
    server.stop().await.unwrap();
}

/// A body over `server.max_message_bytes` is refused with 413 OUT_OF_RANGE; one under it is
/// served.
#[tokio::test]
async fn body_limit() {
    let mut config = test_config();
    config.server.max_message_bytes = 1024;
    let (server, http) = start(config).await;
    let big = json!({"context": [0.1, 0.2], "decisionId": "x".repeat(2048)});
    let answer = http.post("/v1/models/wheel:choose", &big).await;
    answer.assert_error(413, "OUT_OF_RANGE", None);
    assert!(answer.body["message"].as_str().unwrap().contains("1024"));
    let small = http
        .post("/v1/models/wheel:choose", &json!({"context": [0.1, 0.2]}))
        .await;
    assert_eq!(small.status, 200, "{small:?}");
    server.stop().await.unwrap();
}

/// A stalled log: the reward waiting on it holds the only in-flight slot, so the next call
/// is shed with 429 RESOURCE_EXHAUSTED, RetryInfo and Retry-After; the waiting call itself
/// answers 504 DEADLINE_EXCEEDED at `server.request_timeout_ms`. A log that cannot be written
/// answers 503 UNAVAILABLE.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overload_timeout_and_unavailable() {
    let mut config = test_config();
    config.server.max_in_flight = 1;
    config.server.request_timeout_ms = 1_000;
    config.storage.durability = DurabilityMode::Fsync;
    let faults = config.storage.faults.clone();
    let mut model = ModelConfig::new("m", ModelKind::FixedArms, 2);
    model.arms = vec!["a".into(), "b".into()];
    model.network.hidden_layers = vec![8];
    config.models = vec![model];
    let (server, http) = start(config).await;
    let decision = http
        .post("/v1/models/m:choose", &json!({"context": [0, 1]}))
        .await;
    assert_eq!(decision.status, 200, "{decision:?}");
    let id = decision.body["decisionId"].as_str().unwrap().to_owned();

    faults.stall.store(true, Ordering::Release);
    // The writer takes nothing more once its idle wait ends.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let waiting = {
        let http = Http::new(http.base.strip_prefix("http://").unwrap().parse().unwrap());
        tokio::spawn(async move {
            http.post(
                "/v1/models/m:reward",
                &json!({"decisionId": id, "reward": 1}),
            )
            .await
        })
    };
    // Once the reward holds the only slot (it waits on the stalled log for its whole 1 s
    // timeout), other calls are shed; until it arrives they are served.
    let mut shed = http.get("/v1/models/m").await;
    for _ in 0..40 {
        if shed.status != 200 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
        shed = http.get("/v1/models/m").await;
    }
    shed.assert_error(429, "RESOURCE_EXHAUSTED", None);
    assert_eq!(shed.headers["retry-after"], "1");
    assert_eq!(
        shed.body["details"][0],
        json!({"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "0.100s"})
    );
    waiting
        .await
        .unwrap()
        .assert_error(504, "DEADLINE_EXCEEDED", None);
    faults.stall.store(false, Ordering::Release);

    // A log that cannot be written: decisions are refused with UNAVAILABLE once the writer
    // has failed (the first decision after the fault may still be queued before it fails).
    faults.fail_writes.store(true, Ordering::Release);
    let mut unavailable = None;
    for _ in 0..500 {
        let answer = http
            .post("/v1/models/m:choose", &json!({"context": [0, 1]}))
            .await;
        if answer.status == 503 {
            unavailable = Some(answer);
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let unavailable = unavailable.expect("no 503 within 10 s of the log failing");
    unavailable.assert_error(503, "UNAVAILABLE", None);
    // UNAVAILABLE says when to retry too: the RetryInfo of the status, and Retry-After.
    assert_eq!(unavailable.headers["retry-after"], "1", "{unavailable:?}");
    assert_eq!(
        unavailable.body["details"][0],
        json!({"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "1.000s"})
    );
    faults.fail_writes.store(false, Ordering::Release);
    server.stop().await.unwrap();
}

/// The first decision of two fresh servers with the same configuration (same seeds), one
/// asked over gRPC and one over HTTP/JSON with the same decision id, is the same decision:
/// arm, every score and its spread, propensity. JSON carries the f64s exactly.
#[tokio::test]
async fn json_and_grpc_decide_the_same() {
    let request = pb::ChooseArmRequest {
        model: "items".into(),
        context: vec![0.25, -0.5, 0.75, 0.0, 1.0, -1.0, 0.5, 0.125],
        candidates: (0..4)
            .map(|i| pb::Arm {
                id: format!("item-{i}"),
                features: (0..8).map(|j| ((i * 8 + j) as f32 * 0.37).sin()).collect(),
            })
            .collect(),
        excluded_arm_ids: vec!["item-3".into()],
        decision_id: "same-1".into(),
        default_arm_id: String::new(),
        propensity_samples: 20,
        explain_samples: 10,
    };
    let server = TestServer::start(test_config()).await;
    let by_grpc = server
        .client()
        .await
        .choose_arm(request.clone())
        .await
        .unwrap()
        .into_inner();
    server.stop().await.unwrap();

    let (server, http) = start(test_config()).await;
    let body = serde_json::to_value(&request).unwrap();
    let answer = http.post("/v1/models/items:choose", &body).await;
    assert_eq!(answer.status, 200, "{answer:?}");
    let by_http: pb::ChooseArmResponse = serde_json::from_value(answer.body).unwrap();
    server.stop().await.unwrap();
    assert_eq!(by_http, by_grpc);
    assert!(by_grpc.propensity.is_some() && by_grpc.scores.len() == 3);
}

/// `serve` over TLS: the `[tls]` files serve HTTPS too (HTTP/1.1 over rustls, the client
/// trusting the test CA).
#[tokio::test]
async fn https_with_the_grpc_certificate() {
    use tokio_rustls::{
        TlsConnector,
        rustls::{ClientConfig, RootCertStore, pki_types::ServerName},
    };
    let dir = tempfile::tempdir().unwrap();
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
    let (cert_file, key_file) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    std::fs::write(&cert_file, cert.cert.pem()).unwrap();
    std::fs::write(&key_file, cert.signing_key.serialize_pem()).unwrap();
    let mut config = test_config();
    config.tls.cert_file = Some(cert_file);
    config.tls.key_file = Some(key_file);
    // Readiness goes through gRPC health, which needs TLS now: start without waiting.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let http_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let http_addr = http_listener.local_addr().unwrap();
    config.storage.data_dir = dir.path().join("data");
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let run = tokio::spawn(banditd::server::run_with_http(
        config,
        listener,
        Some(http_listener),
        async {
            let _ = stop_rx.await;
        },
    ));
    let mut roots = RootCertStore::empty();
    roots.add(cert.cert.der().clone()).unwrap();
    let mut tls = ClientConfig::builder_with_provider(Arc::new(
        tokio_rustls::rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    tls.alpn_protocols = vec![b"http/1.1".to_vec()];
    let connector = TlsConnector::from(Arc::new(tls));
    let mut answer = None;
    for _ in 0..300 {
        let tcp = tokio::net::TcpStream::connect(http_addr).await.unwrap();
        let stream = connector
            .connect(ServerName::try_from("localhost").unwrap(), tcp)
            .await
            .expect("TLS handshake");
        let (mut sender, conn) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
                .await
                .unwrap();
        tokio::spawn(conn);
        let request = Request::get("/v1/models")
            .header("host", "localhost")
            .body(Full::new(Bytes::new()))
            .unwrap();
        let response = sender.send_request(request).await.unwrap();
        let status = response.status().as_u16();
        let body = response.into_body().collect().await.unwrap().to_bytes();
        if status != 503 {
            answer = Some((status, serde_json::from_slice::<Value>(&body).unwrap()));
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (status, body) = answer.expect("still recovering after 30 s");
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["models"][0]["name"], "wheel");
    // Plain HTTP on the TLS port gets no answer.
    let plain = Http::new(http_addr);
    let request = Request::get(format!("{}/v1/models", plain.base))
        .body(Full::new(Bytes::new()))
        .unwrap();
    assert!(plain.client.request(request).await.is_err());
    let _ = stop_tx.send(());
    run.await.unwrap().unwrap();
}

/// The OpenAPI document's paths and methods are the server's routes, each of them is served
/// (not 404/405), and every schema of a proto message names exactly the fields the proto
/// JSON of that message has.
#[tokio::test]
async fn openapi_matches_routes_and_proto_json() {
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/proto/banditd/v1/openapi.yaml"
    ))
    .unwrap();
    let doc: Value = serde_yaml_ng::from_str(&text).unwrap();
    let mut documented: Vec<(String, String)> = doc["paths"]
        .as_object()
        .unwrap()
        .iter()
        .flat_map(|(path, ops)| {
            ops.as_object()
                .unwrap()
                .keys()
                .map(move |m| (m.to_uppercase(), path.clone()))
        })
        .collect();
    let mut routes: Vec<(String, String)> = banditd::http::ROUTES
        .iter()
        .map(|(m, p, _)| (*m, *p))
        .chain(banditd::http::OPEN_ROUTES)
        .map(|(m, p)| (m.to_owned(), p.to_owned()))
        .collect();
    documented.sort();
    routes.sort();
    assert_eq!(documented, routes);

    // Each documented route is served: with a real model it answers 200 (DELETE deletes a
    // model of its own, CreateModel creates another, RollbackModel goes back to the newest
    // checkpoint of "wheel").
    let (server, http) = start(test_config()).await;
    let decision = http
        .post("/v1/models/wheel:choose", &json!({"context": [0, 0]}))
        .await;
    let id = decision.body["decisionId"].clone();
    assert_eq!(
        http.post("/v1/models", &json!({"spec": spec("doomed")}))
            .await
            .status,
        200
    );
    let checkpoint =
        http.get("/v1/models/wheel/checkpoints").await.body["checkpoints"][0]["version"].clone();
    for (method, path) in &documented {
        let model = if method == "DELETE" {
            "doomed"
        } else {
            "wheel"
        };
        let path = path.replace("{model}", model);
        let body = match (method.as_str(), path.rsplit(':').next()) {
            (_, Some("choose")) => json!({"context": [0, 0]}),
            (_, Some("reward")) => json!({"decisionId": id, "reward": 1}),
            (_, Some("rollback")) => json!({"version": checkpoint}),
            ("POST", Some("/v1/models")) => json!({"spec": spec("made")}),
            ("PATCH", _) => json!({"settings": ["learning_rate=0.01"]}),
            _ => Value::Null,
        };
        let body = if body.is_null() {
            Vec::new()
        } else {
            body.to_string().into_bytes()
        };
        let answer = http.call(method, &path, None, &body).await;
        assert_eq!(answer.status, 200, "{method} {path}: {answer:?}");
    }
    // The health body is the documented schema.
    let health = http.get("/v1/health").await;
    let schema = &doc["components"]["schemas"]["Health"]["properties"];
    let keys: Vec<&String> = health.body.as_object().unwrap().keys().collect();
    assert_eq!(keys, schema.as_object().unwrap().keys().collect::<Vec<_>>());
    assert!(
        schema["status"]["enum"]
            .as_array()
            .unwrap()
            .contains(&health.body["status"])
    );
    server.stop().await.unwrap();

    // Every field set (optional ones to Some): the serialized keys are the message's JSON
    // field names. Struct literals without `..`: a field added to the proto breaks this test
    // until the document (and this list) have it.
    let arm = pb::Arm {
        id: "a".into(),
        features: vec![1.0],
    };
    let score = pb::ArmScore {
        arm_id: "a".into(),
        score: 1.0,
        posterior_mean: Some(1.0),
        posterior_std: Some(1.0),
    };
    let group = pb::GroupStats {
        rewards: 1,
        reward_sum: 1.0,
        reward_mean: 1.0,
    };
    let info = pb::ModelInfo {
        name: "m".into(),
        kind: 1,
        context_dim: 1,
        arm_feature_dim: 1,
        arm_ids: vec![],
        hidden_layers: vec![],
        drop_rates: vec![],
        learning_rate: 1.0,
        batch_size: 1,
        updates_per_reward: 1,
        replay_capacity: 1,
        prior_strength: 1.0,
        reward_window_seconds: 1.0,
        default_reward: Some(1.0),
        seed: 1,
        model_version: 1,
        decisions: 1,
        rewards: 1,
        training_steps: 1,
        pending_decisions: 1,
        policy: "p".into(),
        epsilon: 1.0,
        propensity_samples: 1,
        awaiting_reward: 1,
        holdout_fraction: 1.0,
        holdout_control: "uniform".into(),
        treatment: Some(group),
        control: Some(group),
        lift: Some(1.0),
        lift_ci_low: Some(1.0),
        lift_ci_high: Some(1.0),
        decay_half_life: Some(1.0),
    };
    let messages: Vec<(&str, Value)> = vec![
        ("Arm", serde_json::to_value(&arm).unwrap()),
        (
            "ChooseArmRequest",
            serde_json::to_value(pb::ChooseArmRequest {
                model: "m".into(),
                context: vec![],
                candidates: vec![],
                excluded_arm_ids: vec![],
                decision_id: "d".into(),
                propensity_samples: 1,
                explain_samples: 1,
                default_arm_id: "a".into(),
            })
            .unwrap(),
        ),
        ("ArmScore", serde_json::to_value(&score).unwrap()),
        (
            "ChooseArmResponse",
            serde_json::to_value(pb::ChooseArmResponse {
                decision_id: "d".into(),
                arm_id: "a".into(),
                scores: vec![],
                model_version: 1,
                propensity: Some(1.0),
                holdout: true,
            })
            .unwrap(),
        ),
        (
            "ReportRewardRequest",
            serde_json::to_value(pb::ReportRewardRequest {
                model: "m".into(),
                decision_id: "d".into(),
                reward: 1.0,
                regret: Some(1.0),
            })
            .unwrap(),
        ),
        (
            "ReportRewardResponse",
            serde_json::to_value(pb::ReportRewardResponse { duplicate: true }).unwrap(),
        ),
        (
            "ListModelsResponse",
            serde_json::to_value(pb::ListModelsResponse { models: vec![] }).unwrap(),
        ),
        ("ModelInfo", serde_json::to_value(&info).unwrap()),
        ("GroupStats", serde_json::to_value(group).unwrap()),
        (
            "ModelSpec",
            serde_json::to_value(pb::ModelSpec {
                name: "m".into(),
                kind: 1,
                context_dim: 1,
                arms: vec![],
                arm_feature_dim: 1,
                hidden_layers: vec![],
                settings: vec![],
            })
            .unwrap(),
        ),
        (
            "CreateModelRequest",
            serde_json::to_value(pb::CreateModelRequest {
                spec: Some(pb::ModelSpec::default()),
            })
            .unwrap(),
        ),
        (
            "UpdateModelRequest",
            serde_json::to_value(pb::UpdateModelRequest {
                model: "m".into(),
                settings: vec![],
            })
            .unwrap(),
        ),
        (
            "DeleteModelRequest",
            serde_json::to_value(pb::DeleteModelRequest {
                model: "m".into(),
                drop_checkpoints: true,
            })
            .unwrap(),
        ),
        (
            "DeleteModelResponse",
            serde_json::to_value(pb::DeleteModelResponse {}).unwrap(),
        ),
        (
            "CheckpointInfo",
            serde_json::to_value(pb::CheckpointInfo {
                version: 1,
                created_ms: 1,
                training_steps: 1,
                rewards: 1,
            })
            .unwrap(),
        ),
        (
            "ListCheckpointsResponse",
            serde_json::to_value(pb::ListCheckpointsResponse {
                checkpoints: vec![],
            })
            .unwrap(),
        ),
        (
            "RollbackModelRequest",
            serde_json::to_value(pb::RollbackModelRequest {
                model: "m".into(),
                version: 1,
            })
            .unwrap(),
        ),
    ];
    let schemas = doc["components"]["schemas"].as_object().unwrap();
    for (name, value) in messages {
        let mut proto: Vec<&String> = value.as_object().unwrap().keys().collect();
        let mut documented: Vec<&String> = schemas[name]["properties"]
            .as_object()
            .unwrap_or_else(|| panic!("no schema {name}"))
            .keys()
            .collect();
        proto.sort();
        documented.sort();
        assert_eq!(documented, proto, "schema {name}");
    }
}

/// `banditd-loadgen grpc --transport http` drives the HTTP face: every round decided and
/// rewarded without an error, with a token, and the server counted them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn loadgen_drives_the_http_face() {
    let mut config = test_config();
    config.auth.tokens = vec![Secret("lg-token".into())];
    let (server, http) = start(config).await;
    let base = http.base.clone();
    let output = tokio::task::spawn_blocking(move || {
        common::loadgen_command(&[
            "grpc",
            "--transport",
            "http",
            "--target",
            &base,
            "--rounds",
            "300",
            "--workers",
            "8",
            "--quiet",
            "--json",
        ])
        .env("BANDITD_TOKEN", "lg-token")
        .output()
        .unwrap()
    })
    .await
    .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let report: Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(
        (
            &report["decisions"],
            &report["rewards_accepted"],
            &report["errors_total"]
        ),
        (&json!(300), &json!(300), &json!(0)),
        "{report}"
    );
    let wheel = http
        .call("GET", "/v1/models/wheel", Some("lg-token"), b"")
        .await;
    assert_eq!(
        (&wheel.body["decisions"], &wheel.body["rewards"]),
        (&json!("300"), &json!("300"))
    );
    server.stop().await.unwrap();
}

/// The `banditd` binary turns the face on from `[http] addr` in its configuration file, and
/// HTTP failures are counted in `banditd_request_errors_total` with `transport="http"`
/// beside the gRPC series (all created at zero at start).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binary_serves_http_from_config_and_counts_by_transport() {
    let dir = tempfile::tempdir().unwrap();
    let http_addr = common::free_addr();
    let mut config = test_config();
    config.http.addr = Some(http_addr);
    let path = dir.path().join("banditd.toml");
    std::fs::write(&path, toml::to_string(&config).unwrap()).unwrap();
    let server = common::start_banditd(&["--config", path.to_str().unwrap()]);
    let http = Http::new(http_addr);
    let mut served = false;
    for _ in 0..300 {
        // Connecting first: a refused connection would fail the client call.
        if std::net::TcpStream::connect(http_addr).is_ok()
            && http.get("/v1/models/wheel").await.status == 200
        {
            served = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(served, "no HTTP face on {http_addr} within 30 s");
    for _ in 0..2 {
        http.post("/v1/models/wheel:choose", &json!({"context": [1]}))
            .await
            .assert_error(400, "INVALID_ARGUMENT", Some("context"));
    }
    let metrics = server.metrics;
    let text = tokio::task::spawn_blocking(move || common::scrape(metrics))
        .await
        .unwrap();
    let series = |transport: &str| {
        common::series(
            &text,
            &format!(
                "banditd_request_errors_total{{transport=\"{transport}\",method=\"ChooseArm\",code=\"INVALID_ARGUMENT\"}}"
            ),
        )
    };
    assert_eq!(series("http"), Some(2.0), "{text}");
    assert_eq!(series("grpc"), Some(0.0), "{text}");
}

/// Shutdown drains the HTTP face with gRPC: a call in flight when the signal comes (a reward
/// waiting on a stalled log) still gets its answer, new connections are refused, and `run`
/// returns only after both transports have stopped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_drains_http_calls() {
    let mut config = test_config();
    config.storage.durability = DurabilityMode::Fsync;
    config.server.drain_timeout_ms = 10_000;
    let faults = config.storage.faults.clone();
    let (mut server, http) = start(config).await;
    let decision = http
        .post("/v1/models/wheel:choose", &json!({"context": [0, 1]}))
        .await;
    let id = decision.body["decisionId"].as_str().unwrap().to_owned();
    faults.stall.store(true, Ordering::Release);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let addr: SocketAddr = http.base.strip_prefix("http://").unwrap().parse().unwrap();
    let waiting = tokio::spawn(async move {
        Http::new(addr)
            .post(
                "/v1/models/wheel:reward",
                &json!({"decisionId": id, "reward": 1}),
            )
            .await
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !waiting.is_finished(),
        "the reward should wait on the stalled log"
    );
    server.signal_shutdown();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        std::net::TcpStream::connect(addr).is_err(),
        "the HTTP listener should be closed once shutdown begins"
    );
    assert!(!waiting.is_finished());
    faults.stall.store(false, Ordering::Release);
    let answer = waiting.await.unwrap();
    assert_eq!(
        (answer.status, &answer.body),
        (200, &json!({"duplicate": false})),
        "{answer:?}"
    );
    server.join().await.unwrap();
}

/// `GET /v1/health` until it answers `status` (every 20 ms, at most 10 s); the last answer.
async fn health_becomes(http: &Http, status: u16) -> Answer {
    let mut answer = http.get("/v1/health").await;
    for _ in 0..500 {
        if answer.status == status {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
        answer = http.get("/v1/health").await;
    }
    answer
}

/// `GET /v1/health` needs no token even with tokens configured, and says what gRPC health
/// says: SERVING after the start, NOT_SERVING (503) while the log cannot be written (decisions
/// are refused meanwhile), SERVING again once the disk takes writes. Other methods on the
/// path still need a token.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_follows_the_log_without_a_token() {
    let mut config = test_config();
    config.auth.tokens = vec![Secret("user-t".into())];
    config.auth.admin_tokens = vec![Secret("admin-t".into())];
    config.storage.sync_interval_ms = 20;
    let faults = config.storage.faults.clone();
    let (server, http) = start(config).await;
    // `start` saw gRPC SERVING; the HTTP state is set right after it.
    let serving = health_becomes(&http, 200).await;
    assert_eq!(
        (serving.status, &serving.body),
        (200, &json!({"status": "SERVING"})),
        "{serving:?}"
    );
    assert_eq!(serving.headers["content-type"], "application/json");
    assert_eq!(serving.headers["cache-control"], "no-store");
    assert_eq!(server.health().await, ServingStatus::Serving);
    http.call("POST", "/v1/health", None, b"")
        .await
        .assert_error(401, "UNAUTHENTICATED", None);
    http.call("POST", "/v1/health", Some("user-t"), b"")
        .await
        .assert_error(405, "UNIMPLEMENTED", None);

    // A full disk: the first write fails, then health turns NOT_SERVING.
    faults.fail_writes.store(true, Ordering::Release);
    let choose = br#"{"context": [0.1, 0.2]}"#;
    let refused = http
        .call("POST", "/v1/models/wheel:choose", Some("user-t"), choose)
        .await;
    assert!(
        matches!(refused.status, 200 | 503),
        "a decision is served before the writer fails or refused after: {refused:?}"
    );
    let down = health_becomes(&http, 503).await;
    assert_eq!(
        (down.status, &down.body),
        (503, &json!({"status": "NOT_SERVING"})),
        "{down:?}"
    );
    // gRPC health is set first, the HTTP state second: 503 here means gRPC says so already.
    assert_eq!(server.health().await, ServingStatus::NotServing);
    http.call("POST", "/v1/models/wheel:choose", Some("user-t"), choose)
        .await
        .assert_error(503, "UNAVAILABLE", None);

    faults.fail_writes.store(false, Ordering::Release);
    let up = health_becomes(&http, 200).await;
    assert_eq!(
        (up.status, &up.body),
        (200, &json!({"status": "SERVING"})),
        "{up:?}"
    );
    assert_eq!(server.health().await, ServingStatus::Serving);
    let served = http
        .call("POST", "/v1/models/wheel:choose", Some("user-t"), choose)
        .await;
    assert_eq!(served.status, 200, "{served:?}");
    server.stop().await.unwrap();
}

/// While the server cannot start serving (here: cluster mode with no NATS to reach, so
/// startup waits), `GET /v1/health` is 503 NOT_SERVING, as gRPC health is, and calls are
/// UNAVAILABLE; a shutdown signal still ends `run` (it used to wait for NATS for ever).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_not_serving_before_startup_is_done() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config();
    config.storage.data_dir = dir.path().to_owned();
    // A port nothing listens on: the NATS connection is retried for ever.
    config.cluster = Some(ClusterConfig {
        url: format!("nats://{}", common::free_addr()),
        ..ClusterConfig::default()
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let http_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let (addr, http_addr) = (
        listener.local_addr().unwrap(),
        http_listener.local_addr().unwrap(),
    );
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let run = tokio::spawn(banditd::server::run_with_http(
        config,
        listener,
        Some(http_listener),
        async {
            let _ = stop_rx.await;
        },
    ));
    let http = Http::new(http_addr);
    // Long enough for several NATS attempts: still not serving.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let health = http.get("/v1/health").await;
    assert_eq!(
        (health.status, &health.body),
        (503, &json!({"status": "NOT_SERVING"})),
        "{health:?}"
    );
    let channel = tonic::transport::Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let status = HealthClient::new(channel)
        .check(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .unwrap()
        .into_inner()
        .status();
    assert_eq!(status, ServingStatus::NotServing);
    http.post("/v1/models/wheel:choose", &json!({"context": [0.1, 0.2]}))
        .await
        .assert_error(503, "UNAVAILABLE", None);
    assert!(!run.is_finished());
    let _ = stop_tx.send(());
    tokio::time::timeout(Duration::from_secs(30), run)
        .await
        .expect("run still waiting for NATS 30 s after the shutdown signal")
        .unwrap()
        .unwrap();
}
