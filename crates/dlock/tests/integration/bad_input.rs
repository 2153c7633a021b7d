//! Bad input gets a clear, typed error, never a panic, and never a password in a message.

use std::net::TcpListener;
use std::time::Duration;

use dlock::{Client, ClientOptions, Error, LockOptions};
use dlock_test::{RedisServer, ServerOptions};

use crate::support::{client, take_and_release};

#[tokio::test]
async fn malformed_urls_are_config_errors() {
    for url in [
        "not a url",
        "redis://",
        "http://127.0.0.1:6379/",
        "redis://127.0.0.1:99999/",
    ] {
        let err = Client::connect(url).await.unwrap_err();
        assert!(err.is_config(), "{url}: {err:?}");
    }
    let err = Client::connect("redis://u:hunter2@127.0.0.1:notaport/")
        .await
        .unwrap_err();
    assert!(err.is_config());
    assert!(!err.to_string().contains("hunter2"), "{err}");
}

#[tokio::test]
async fn bad_ttls_names_and_timeouts_are_config_errors() {
    let server = RedisServer::start();
    let c = client(&server).await;
    for ttl in [
        Duration::ZERO,
        Duration::from_millis(5),
        Duration::from_secs(400 * 24 * 3600),
    ] {
        let err = c.lock_with("k", LockOptions::new().ttl(ttl)).unwrap_err();
        assert!(err.is_config(), "{ttl:?}: {err:?}");
        assert!(err.to_string().contains("TTL"), "{err}");
    }
    assert!(c.lock("").unwrap_err().is_config());
    assert!(c
        .lock(&"x".repeat(dlock::MAX_NAME_LEN + 1))
        .unwrap_err()
        .is_config());
    assert!(c.status("").await.unwrap_err().is_config());
    let guard = c.lock("k").unwrap().try_lock().await.unwrap();
    assert!(guard.extend(Duration::ZERO).await.unwrap_err().is_config());
    guard.release().await.unwrap();
    let zero = ClientOptions::new().command_timeout(Duration::ZERO);
    assert!(Client::connect_with(&server.url(), zero)
        .await
        .unwrap_err()
        .is_config());
}

#[tokio::test]
async fn an_unreachable_server_is_unavailable_quickly() {
    // A port that was free a moment ago: nothing listens there.
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let started = std::time::Instant::now();
    let err = Client::connect(&format!("redis://:s3cret@127.0.0.1:{port}/"))
        .await
        .unwrap_err();
    assert!(err.is_unavailable(), "{err:?}");
    let message = err.to_string();
    assert!(
        message.contains(&port.to_string()) && !message.contains("s3cret"),
        "{message}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "took {:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn wrong_or_missing_passwords_are_auth_errors_without_the_password() {
    let server = RedisServer::start_with(ServerOptions {
        password: Some("right-pw".into()),
        ..ServerOptions::default()
    });
    let base = format!("127.0.0.1:{}", server.port());
    let err = Client::connect(&format!("redis://:wrong-pw@{base}/"))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Auth { .. }), "{err:?}");
    assert!(!err.to_string().contains("wrong-pw"), "{err}");
    // No password at all: the connection opens (nothing is sent at connect) and the first
    // call is refused with an auth error.
    let bare = Client::connect(&format!("redis://{base}/")).await.unwrap();
    let err = bare.lock("k").unwrap().try_lock().await.unwrap_err();
    assert!(matches!(err, Error::Auth { .. }), "{err:?}");
    assert_eq!(err.kind(), dlock::ErrorKind::Auth);

    let ok = Client::connect(&format!("redis://:right-pw@{base}/"))
        .await
        .unwrap();
    assert!(!ok.server().contains("right-pw"), "{}", ok.server());
    take_and_release(&ok, "k").await;
}

#[tokio::test]
async fn acl_users_database_numbers_and_unix_sockets_work() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("redis.sock");
    let server = RedisServer::start_with(ServerOptions {
        extra_args: vec![
            "--unixsocket".into(),
            socket.display().to_string(),
            "--unixsocketperm".into(),
            "700".into(),
        ],
        ..ServerOptions::default()
    });
    let _: () = server.cmd(
        "ACL",
        &["SETUSER", "alice", "on", ">alice-pw", "~*", "+@all"],
    );

    let acl = Client::connect(&format!(
        "redis://alice:alice-pw@127.0.0.1:{}/3",
        server.port()
    ))
    .await
    .unwrap();
    let guard = acl.lock("in-db-3").unwrap().try_lock().await.unwrap();
    let mut con = server.connection();
    let _: () = redis::cmd("SELECT").arg(3).query(&mut con).unwrap();
    let exists: i64 = redis::cmd("EXISTS").arg("in-db-3").query(&mut con).unwrap();
    assert_eq!(exists, 1, "the lock lives in database 3");
    guard.release().await.unwrap();

    let unix = Client::connect(&format!("unix://{}", socket.display()))
        .await
        .unwrap();
    take_and_release(&unix, "via-socket").await;

    let denied = Client::connect(&format!("redis://alice:nope@127.0.0.1:{}/", server.port()))
        .await
        .unwrap_err();
    assert!(matches!(denied, Error::Auth { .. }), "{denied:?}");
}

#[tokio::test]
async fn a_key_of_the_wrong_type_is_a_redis_error_not_a_panic() {
    let server = RedisServer::start();
    let c = client(&server).await;
    let _: () = server.cmd("HSET", &["hash", "f", "v"]);
    let err = c.lock("hash").unwrap().try_lock().await.unwrap_err();
    assert!(matches!(err.kind(), dlock::ErrorKind::Redis), "{err:?}");
}

#[tokio::test]
async fn rediss_urls_speak_tls() {
    let server = RedisServer::start_with(ServerOptions {
        tls: true,
        ..ServerOptions::default()
    });
    let c = Client::connect(&server.url()).await.unwrap();
    let guard = c.lock("over-tls").unwrap().try_lock().await.unwrap();
    assert!(guard.fencing_token() > 0);
    guard.release().await.unwrap();
    // A plain-text client cannot talk to a TLS-only port: a clear error, not a hang or panic.
    let plain = format!("redis://127.0.0.1:{}/", server.port());
    let options = ClientOptions::new().connect_timeout(Duration::from_secs(1));
    let err = Client::connect_with(&plain, options).await.unwrap_err();
    assert!(err.is_unavailable(), "{err:?}");
}

#[tokio::test]
async fn a_private_ca_is_trusted_when_given_and_refused_otherwise() {
    let server = RedisServer::start_with(ServerOptions {
        tls: true,
        ..ServerOptions::default()
    });
    let (pem, verified_url) = server.tls_certificate();
    let trusted = ClientOptions::new().tls_root_cert_pem(pem.clone());
    let c = Client::connect_with(&verified_url, trusted.clone())
        .await
        .unwrap();
    take_and_release(&c, "tls").await;
    // Valkey's spelling of the same URL (redis-rs reads both).
    let valkeys = verified_url.replacen("rediss://", "valkeys://", 1);
    assert!(valkeys.starts_with("valkeys://"), "{verified_url}");
    let c = Client::connect_with(&valkeys, trusted).await.unwrap();
    take_and_release(&c, "tls-valkeys").await;
    // Without the CA (and without #insecure) the self-signed certificate is refused.
    let options = ClientOptions::new().connect_timeout(Duration::from_secs(1));
    let err = Client::connect_with(&verified_url, options)
        .await
        .unwrap_err();
    assert!(err.is_unavailable() || err.is_config(), "{err:?}");
    // A CA for a plain-text URL is a mistake worth saying.
    let plain = format!("redis://127.0.0.1:{}/", server.port());
    let err = Client::connect_with(&plain, ClientOptions::new().tls_root_cert_pem(pem))
        .await
        .unwrap_err();
    assert!(
        err.is_config() && err.to_string().contains("rediss://"),
        "{err}"
    );
}

/// Issue 9: a name equal to another lock's companion key (its fencing counter, holder info,
/// queue...) would let one lock overwrite the other's state; such names are refused.
#[tokio::test]
async fn names_that_are_another_locks_companion_keys_are_config_errors() {
    let server = RedisServer::start();
    let c = client(&server).await;
    let guard = c.lock("x").unwrap().try_lock().await.unwrap();
    for name in [
        "{x}:dlock:fence:x",
        "{x}:dlock:info:x",
        "{x}:dlock:queue:x",
        "{x}:dlock:released:x",
    ] {
        let err = c.lock(name).unwrap_err();
        assert!(err.is_config(), "{name}: {err:?}");
        assert!(err.to_string().contains("{…}:dlock:"), "{err}");
        assert!(c.status(name).await.unwrap_err().is_config());
    }
    // The fencing counter of `x` is untouched, and `x` still works.
    guard.release().await.unwrap();
    take_and_release(&c, "x").await;
}

/// A Redlock master that requires a password its URL lacks fails the connect: otherwise it
/// would refuse every call while a quorum of the others hid it, and the deployment would run
/// one failure short of what it was built to survive (found by review when the single-node
/// connect stopped sending a PING).
#[tokio::test]
async fn a_redlock_master_missing_its_password_fails_the_connect() {
    let open = [RedisServer::start(), RedisServer::start()];
    let locked = RedisServer::start_with(ServerOptions {
        password: Some("master-pw".into()),
        ..ServerOptions::default()
    });
    let urls: Vec<String> = open
        .iter()
        .chain([&locked])
        .map(|server| format!("redis://127.0.0.1:{}/", server.port()))
        .collect();
    let err = Client::redlock(&urls).await.unwrap_err();
    assert!(matches!(err, Error::Auth { .. }), "{err:?}");
    assert!(err.to_string().contains("password"), "{err}");
}

/// Valkey's URL schemes work wherever Redis's do: `valkey://`, with a password (never shown).
#[tokio::test]
async fn valkey_urls_work_like_redis_urls() {
    let server = RedisServer::start_with(ServerOptions {
        password: Some("v-pw".into()),
        ..ServerOptions::default()
    });
    let url = format!("valkey://:v-pw@127.0.0.1:{}/", server.port());
    let c = Client::connect(&url).await.unwrap();
    assert!(c.server().starts_with("valkey://"), "{}", c.server());
    assert!(!c.server().contains("v-pw"), "{}", c.server());
    take_and_release(&c, "valkey-url").await;
}
