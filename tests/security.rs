//! Access control and limits against a real server: bearer tokens with an admin role, TLS
//! and mutual TLS with certificates made here (rcgen), the message size limit and the
//! in-flight limit.

mod common;

use banditd::{
    config::{DurabilityMode, Secret},
    proto::{GetModelRequest, bandit_service_client::BanditServiceClient},
};
use common::{TestServer, arm, fixed, test_config};
use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
use tonic::{
    Code, Request,
    transport::{Certificate, Channel, ClientTlsConfig, Identity},
};

fn with_token<T>(message: T, token: &str) -> Request<T> {
    let mut request = Request::new(message);
    request
        .metadata_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    request
}

/// Without a token a call is UNAUTHENTICATED; a wrong token too, and its message does not
/// echo the token; a user token may decide (the scheme in any case) but not read models; an
/// admin token may do both; health stays open (the server became ready through it).
#[tokio::test]
async fn bearer_tokens_and_admin_role() {
    let mut config = test_config();
    config.auth.tokens = vec![Secret("user-secret".into())];
    config.auth.admin_tokens = vec![Secret("admin-secret".into())];
    let server = TestServer::start(config).await;
    let mut client = server.client().await;
    let denied = client
        .choose_arm(fixed("wheel", vec![0.0, 0.0]))
        .await
        .unwrap_err();
    assert_eq!(denied.code(), Code::Unauthenticated);
    let wrong = client
        .choose_arm(with_token(
            fixed("wheel", vec![0.0, 0.0]),
            "guessed-Tok3n-8f2a",
        ))
        .await
        .unwrap_err();
    assert_eq!(wrong.code(), Code::Unauthenticated);
    assert!(
        !wrong.message().contains("guessed-Tok3n-8f2a") && !wrong.message().contains("8f2a"),
        "{}",
        wrong.message()
    );
    client
        .choose_arm(with_token(fixed("wheel", vec![0.0, 0.0]), "user-secret"))
        .await
        .unwrap();
    for scheme in ["bearer", "BEARER", "bEaReR"] {
        let mut request = tonic::Request::new(fixed("wheel", vec![0.0, 0.0]));
        request.metadata_mut().insert(
            "authorization",
            format!("{scheme} user-secret").parse().unwrap(),
        );
        client
            .choose_arm(request)
            .await
            .unwrap_or_else(|s| panic!("scheme {scheme:?} refused: {s:?}"));
    }
    client
        .choose_arm(with_token(fixed("wheel", vec![0.0, 0.0]), "admin-secret"))
        .await
        .unwrap();
    let get = || GetModelRequest {
        model: "wheel".into(),
    };
    assert_eq!(
        client
            .get_model(with_token(get(), "user-secret"))
            .await
            .unwrap_err()
            .code(),
        Code::PermissionDenied
    );
    client
        .get_model(with_token(get(), "admin-secret"))
        .await
        .unwrap();
    server.stop().await.unwrap();
}

struct Pki {
    ca: String,
    server_cert: String,
    server_key: String,
    client_cert: String,
    client_key: String,
}

fn pki() -> Pki {
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca_cert = ca_params.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca_params, ca_key);
    let leaf = |name: &str| {
        let key = KeyPair::generate().unwrap();
        let cert = CertificateParams::new(vec![name.to_owned()])
            .unwrap()
            .signed_by(&key, &issuer)
            .unwrap();
        (cert.pem(), key.serialize_pem())
    };
    let (server_cert, server_key) = leaf("localhost");
    let (client_cert, client_key) = leaf("client");
    Pki {
        ca: ca_cert.pem(),
        server_cert,
        server_key,
        client_cert,
        client_key,
    }
}

async fn tls_client(
    server: &TestServer,
    pki: &Pki,
    identity: bool,
) -> Result<BanditServiceClient<Channel>, tonic::transport::Error> {
    let mut tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(&pki.ca))
        .domain_name("localhost");
    if identity {
        tls = tls.identity(Identity::from_pem(&pki.client_cert, &pki.client_key));
    }
    let channel = Channel::from_shared(format!("https://localhost:{}", server.addr.port()))
        .unwrap()
        .tls_config(tls)?
        .connect()
        .await?;
    Ok(BanditServiceClient::new(channel))
}

/// With TLS and a client CA, a client with a certificate signed by that CA is served; one
/// without a certificate, and a plaintext one, are refused.
#[tokio::test]
async fn mutual_tls() {
    let pki = pki();
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, text: &str| {
        let path = dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        path
    };
    let mut config = test_config();
    config.tls.cert_file = Some(write("server.pem", &pki.server_cert));
    config.tls.key_file = Some(write("server.key", &pki.server_key));
    config.tls.client_ca_file = Some(write("ca.pem", &pki.ca));
    let server = TestServer::spawn(config).await;

    // Ready once a TLS client gets an answer other than UNAVAILABLE (recovering).
    let mut client = tls_client(&server, &pki, true)
        .await
        .expect("mTLS client connects");
    let mut answered = None;
    for _ in 0..500 {
        match client.choose_arm(fixed("wheel", vec![0.1, 0.1])).await {
            Err(s) if s.code() == Code::Unavailable => {
                tokio::time::sleep(std::time::Duration::from_millis(10)).await
            }
            other => {
                answered = Some(other);
                break;
            }
        }
    }
    answered
        .expect("server never became ready")
        .expect("mTLS call fails");

    let anonymous = match tls_client(&server, &pki, false).await {
        Err(_) => None,
        Ok(mut c) => Some(c.choose_arm(fixed("wheel", vec![0.1, 0.1])).await),
    };
    assert!(
        !matches!(anonymous, Some(Ok(_))),
        "a client without a certificate was served"
    );
    let plain = match BanditServiceClient::connect(format!(
        "http://127.0.0.1:{}",
        server.addr.port()
    ))
    .await
    {
        Err(_) => None,
        Ok(mut c) => Some(c.choose_arm(fixed("wheel", vec![0.1, 0.1])).await),
    };
    assert!(
        !matches!(plain, Some(Ok(_))),
        "a plaintext client was served"
    );
    server.stop().await.unwrap();
}

/// A request larger than `max_message_bytes` is refused with OUT_OF_RANGE, and the server
/// answers normal requests afterwards.
#[tokio::test]
async fn message_size_limit() {
    let mut config = test_config();
    config.server.max_message_bytes = 4096;
    let server = TestServer::start(config).await;
    let mut client = server.client().await;
    let mut big = fixed("items", vec![0.0; 8]);
    big.candidates = (0..200)
        .map(|i| arm(&format!("item-{i}"), vec![0.5; 8]))
        .collect();
    let status = client.choose_arm(big).await.unwrap_err();
    assert_eq!(status.code(), Code::OutOfRange, "{status:?}");
    client
        .choose_arm(fixed("wheel", vec![0.0, 0.0]))
        .await
        .unwrap();
    server.stop().await.unwrap();
}

/// Past `max_in_flight` calls are shed at once with RESOURCE_EXHAUSTED. Decisions here wait
/// for an fsynced commit (milliseconds), so 32 concurrent calls overlap a limit of 1.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_flight_limit_sheds() {
    let mut config = test_config();
    config.server.max_in_flight = 1;
    config.storage.durability = DurabilityMode::Fsync;
    config.storage.sync_decisions = true;
    let server = TestServer::start(config).await;
    let client = server.client().await;
    let tasks: Vec<_> = (0..32)
        .map(|_| {
            let mut client = client.clone();
            tokio::spawn(async move { client.choose_arm(fixed("wheel", vec![0.0, 0.0])).await })
        })
        .collect();
    let mut shed = 0;
    for task in tasks {
        if let Err(status) = task.await.unwrap() {
            assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
            assert!(
                status.message().contains("in-flight"),
                "{}",
                status.message()
            );
            shed += 1;
        }
    }
    assert!(shed > 0, "no call was shed");
    assert!(shed < 32, "every call was shed");
    server.stop().await.unwrap();
}

/// The load generator reaches a mutual-TLS server with `--ca-cert`, `--client-cert` and
/// `--client-key`, and cannot without the client certificate.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn loadgen_over_mutual_tls() {
    let pki = pki();
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, text: &str| {
        let path = dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        path.display().to_string()
    };
    let (ca, cert, key) = (
        write("ca.pem", &pki.ca),
        write("client.pem", &pki.client_cert),
        write("client.key", &pki.client_key),
    );
    let mut config = test_config();
    config.tls.cert_file = Some(write("server.pem", &pki.server_cert).into());
    config.tls.key_file = Some(write("server.key", &pki.server_key).into());
    config.tls.client_ca_file = Some(ca.clone().into());
    let server = TestServer::spawn(config).await;
    let target = format!("https://localhost:{}", server.addr.port());
    let run = |identity: bool| {
        let mut args = vec![
            "grpc",
            "--target",
            &target,
            "--rounds",
            "30",
            "--json",
            "--quiet",
            "--ca-cert",
            &ca,
        ];
        if identity {
            args.extend(["--client-cert", &cert, "--client-key", &key]);
        }
        common::loadgen_command(&args)
            .output()
            .expect("run banditd-loadgen")
    };
    // The load generator waits out UNAVAILABLE while the server recovers. (It blocks one of
    // the two workers; the server runs on the other.)
    let served = run(true);
    assert!(
        served.status.success(),
        "{}",
        String::from_utf8_lossy(&served.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&served.stdout).expect("JSON report");
    assert_eq!(report["decisions"].as_u64(), Some(30), "{report}");
    assert!(
        !run(false).status.success(),
        "served without a client certificate"
    );
    server.stop().await.unwrap();
}
