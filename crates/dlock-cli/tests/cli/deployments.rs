//! `dlock run` and friends on every deployment: Redlock (--redis repeated, or several URLs in
//! the env), Sentinel (--sentinel) and Redis Cluster (--cluster).

use std::time::Duration;

use dlock_test::{RedisServer, RedisServers};

use crate::support::{
    code, dlock, finish, output, started, stderr, stdout, wait_for_file, Scratch,
};

const LIMIT: Duration = Duration::from_secs(20);

fn redis_args(servers: &RedisServers) -> Vec<String> {
    servers
        .urls()
        .into_iter()
        .flat_map(|url| ["--redis".to_owned(), url])
        .collect()
}

#[test]
fn run_excludes_across_three_masters_and_survives_one_dead() {
    let mut servers = RedisServers::start(3);
    let any = RedisServer::start(); // only for dlock()'s default env; overridden below
    let scratch = Scratch::new();
    let job = format!("touch {}; sleep 1", scratch.path("started").display());
    let first = started(
        dlock(&any)
            .arg("run")
            .args(redis_args(&servers))
            .args(["job", "--", "sh", "-c", &job]),
        &scratch.path("started"),
    );
    // The same masters through the environment, space-separated.
    let second = output(
        dlock(&any)
            .env("DLOCK_REDIS_URL", servers.urls().join(" "))
            .args(["run", "job", "--", "echo", "duplicate"]),
        LIMIT,
    );
    assert_eq!(code(&second), 75, "{}", stderr(&second));
    assert_eq!(stdout(&second), "");
    let status = output(
        dlock(&any)
            .arg("status")
            .args(redis_args(&servers))
            .arg("job"),
        LIMIT,
    );
    assert!(
        stdout(&status).starts_with("job: held by"),
        "{}",
        stdout(&status)
    );
    assert_eq!(code(&finish(first, LIMIT)), 0);

    servers[0].kill();
    let degraded = output(
        dlock(&any).arg("run").args(redis_args(&servers)).args([
            "--redis-timeout",
            "300ms",
            "job",
            "--",
            "echo",
            "ran",
        ]),
        LIMIT,
    );
    assert_eq!(code(&degraded), 0, "{}", stderr(&degraded));
    assert_eq!(stdout(&degraded), "ran\n");
}

#[test]
fn without_a_majority_run_exits_69_and_an_even_count_is_a_usage_error() {
    let mut servers = RedisServers::start(3);
    let any = RedisServer::start();
    servers[0].kill();
    servers[1].kill();
    let out = output(
        dlock(&any).arg("run").args(redis_args(&servers)).args([
            "--redis-timeout",
            "300ms",
            "job",
            "--",
            "true",
        ]),
        LIMIT,
    );
    assert_eq!(code(&out), 69, "{}", stderr(&out));
    let two = output(
        dlock(&any).args([
            "run",
            "--redis",
            &any.url(),
            "--redis",
            &any.url(),
            "job",
            "--",
            "true",
        ]),
        LIMIT,
    );
    assert_eq!(code(&two), 64, "{}", stderr(&two));
    assert!(stderr(&two).contains("odd number"), "{}", stderr(&two));
}

#[test]
fn bench_measures_redlock_against_the_single_node_floor() {
    let servers = RedisServers::start(3);
    let any = RedisServer::start();
    let out = output(
        dlock(&any).arg("bench").args(redis_args(&servers)).args([
            "--json",
            "--workload",
            "redlock",
            "--duration",
            "300ms",
        ]),
        Duration::from_secs(60),
    );
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let rows: Vec<serde_json::Value> = stdout(&out)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let redlock = rows
        .iter()
        .find(|r| r["workload"] == "redlock")
        .expect("a redlock row");
    assert_eq!(redlock["workers"], 3, "the masters");
    assert!(redlock["ops_per_sec"].as_f64().unwrap() > 0.0);
    assert!(redlock["floor_cycle_ratio"].as_f64().unwrap() > 0.0);
}

#[test]
fn run_finds_the_master_through_sentinel() {
    let master = RedisServer::start_with(dlock_test::ServerOptions {
        password: Some("master-pw".into()),
        ..Default::default()
    });
    let replica = RedisServer::start_replica_of(&master);
    let sentinels = dlock_test::Sentinels::start_with_auth(&master, 3, 1, Some("master-pw"));
    let mut args = vec!["run".to_owned()];
    for url in sentinels.urls() {
        args.extend(["--sentinel".to_owned(), url]);
    }
    args.extend(
        [
            "--sentinel-master",
            dlock_test::MASTER_NAME,
            "job",
            "--",
            "env",
        ]
        .map(String::from),
    );
    let out = output(
        dlock(&replica)
            .env("DLOCK_SENTINEL_MASTER_PASSWORD", "master-pw")
            .args(&args),
        LIMIT,
    );
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert!(stdout(&out).contains("DLOCK_KEY=job\n"), "{}", stdout(&out));
    // Neither dlock's messages nor the command's environment hold the master's password.
    assert!(!stderr(&out).contains("master-pw"));
    assert!(!stdout(&out).contains("master-pw"), "{}", stdout(&out));
    // --sentinel without a master name is a usage error.
    let bad = output(
        dlock(&replica).args(["run", "--sentinel", &sentinels.urls()[0], "k", "--", "true"]),
        LIMIT,
    );
    assert_eq!(code(&bad), 64);
}

#[test]
fn run_status_and_list_work_on_a_cluster() {
    let cluster = dlock_test::RedisCluster::start(3);
    let scratch = Scratch::new();
    let job = format!("touch {}; sleep 1", scratch.path("started").display());
    let seed = cluster.urls()[0].clone();
    let cmd = |args: &[&str]| {
        let mut cmd = dlock(&cluster[1]);
        cmd.env("DLOCK_REDIS_URL", &seed)
            .env("DLOCK_CLUSTER", "true")
            .args(args);
        cmd
    };
    let holder = cmd(&["run", "nightly", "--", "sh", "-c", &job])
        .spawn()
        .unwrap();
    assert!(wait_for_file(&scratch.path("started"), LIMIT));
    let busy = output(&mut cmd(&["run", "nightly", "--", "true"]), LIMIT);
    assert_eq!(code(&busy), 75, "{}", stderr(&busy));
    let listed = output(&mut cmd(&["list", "--json"]), LIMIT);
    assert_eq!(stdout(&listed).lines().count(), 1, "{}", stdout(&listed));
    assert_eq!(code(&finish(holder, LIMIT)), 0);
    let status = output(&mut cmd(&["status", "nightly"]), LIMIT);
    assert!(
        stdout(&status).starts_with("nightly: free"),
        "{}",
        stdout(&status)
    );
}

#[test]
fn run_verifies_tls_against_a_private_ca() {
    let server = RedisServer::start_with(dlock_test::ServerOptions {
        tls: true,
        ..Default::default()
    });
    let (pem, url) = server.tls_certificate();
    let scratch = Scratch::new();
    let ca = scratch.path("ca.pem");
    std::fs::write(&ca, pem).unwrap();
    let out = output(
        dlock(&server)
            .args(["run", "--redis", &url, "--tls-ca"])
            .arg(&ca)
            .args(["k", "--", "echo", "ok"]),
        LIMIT,
    );
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert_eq!(stdout(&out), "ok\n");
    let untrusted = output(
        dlock(&server).args([
            "run",
            "--redis",
            &url,
            "--redis-timeout",
            "1s",
            "k",
            "--",
            "true",
        ]),
        LIMIT,
    );
    assert_eq!(code(&untrusted), 69, "{}", stderr(&untrusted));
    let missing = output(
        dlock(&server).args([
            "run",
            "--redis",
            &url,
            "--tls-ca",
            "/nonexistent.pem",
            "k",
            "--",
            "true",
        ]),
        LIMIT,
    );
    assert_eq!(code(&missing), 64, "{}", stderr(&missing));
    assert!(
        stderr(&missing).contains("--tls-ca"),
        "{}",
        stderr(&missing)
    );
}
