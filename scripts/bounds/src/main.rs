//! The peer bench's workloads with bare commands, to bound what a Rust client can reach here:
//! no fencing, no holder info, no loss reporting, only `SET NX PX` and a compare-and-delete
//! script (the floor's pair). Each mode prints `MODE OPS_PER_S`; `scripts/bounds.sh` divides by
//! the floor measured with redis-benchmark in the same run.
//!
//! The async modes run like the peer bench's Rust adapters: a multi-thread runtime with two
//! workers, the W1/W3 loop in `block_on` on the main thread, the W2 workers as spawned tasks;
//! with `BOUNDS_CURRENT_THREAD` set, on a current-thread runtime instead (one thread does the
//! loop and the I/O: no wake-up crosses threads).
//!
//! ```text
//! dlock-bounds MODE PORT SECONDS
//!   w1-redis-rs   SET NX PX + EVALSHA on one redis-rs multiplexed connection
//!   w1-raw-async  the same on a tokio TcpStream the loop reads and writes itself
//!   w1-raw-sync   the same on a blocking std TcpStream (no runtime in the way)
//!   w1-redis-rs-driven  w1-redis-rs with the connection's driver polled by the loop's own task
//!                 (`MultiplexedConnection::new` hands it over) instead of spawned
//!   w3-redis-rs   each step sent to 5 servers (PORT..PORT+4) at once, redis-rs
//!   w3-raw-async  the same on 5 tokio TcpStreams the loop drives itself
//!   w3-raw-sync   the same on 5 blocking std TcpStreams: write all five, then read all five
//!   w2-ring       8 spawned tasks pass one lock round-robin, one EVALSHA per grant (release and
//!                 grant to the next, server-side), then a wake-up of the next task: what one
//!                 script call per contended hand-off can reach through redis-rs
//! dlock-bounds process-start PROGRAM [ARGS…]
//!   p50 / p99 of starting PROGRAM and waiting for it, and of this binary's `noop` (it links
//!   tokio and redis-rs, and returns before starting a runtime): the fixed cost each process of
//!   `dlock run` pays
//! ```

use std::io::{Read as _, Write as _};
use std::time::{Duration, Instant};

use futures_util::future::join_all;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

/// The floor's compare-and-delete.
const RELEASE: &str =
    "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end return 0";
/// Release ARGV[1]'s hold and grant the lock to ARGV[2], in one call.
const HAND_OFF: &str = "if redis.call('GET', KEYS[1]) == ARGV[1] then \
     redis.call('SET', KEYS[1], ARGV[2], 'PX', 10000) return 1 end return 0";
const KEY: &str = "dlock-bounds:lock";

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let usage = || -> ! {
        eprintln!("usage: dlock-bounds MODE PORT SECONDS | process-start PROGRAM [ARGS…] | noop");
        std::process::exit(2)
    };
    match args.first().map(String::as_str) {
        Some("noop") => return,
        Some("process-start") if args.len() > 1 => return process_start(&args[1..]),
        Some(_) if args.len() == 3 => {}
        _ => usage(),
    }
    let (Ok(port), Ok(seconds)) = (args[1].parse::<u16>(), args[2].parse::<u64>()) else {
        usage()
    };
    // W3's five masters are PORT..PORT+4.
    if port.checked_add(4).is_none() {
        usage()
    }
    let time = Duration::from_secs(seconds);
    let runtime = if std::env::var_os("BOUNDS_CURRENT_THREAD").is_some() {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
    }
    .expect("a tokio runtime");
    let masters: Vec<u16> = (port..port + 5).collect();
    let rate = match args[0].as_str() {
        "w1-raw-sync" => raw_sync(&[port], time),
        "w1-redis-rs" => runtime.block_on(w1_redis_rs(port, time)),
        "w1-raw-async" => runtime.block_on(w1_raw_async(port, time)),
        "w1-redis-rs-driven" => runtime.block_on(w1_redis_rs_driven(port, time)),
        "w3-redis-rs" => runtime.block_on(w3_redis_rs(&masters, time)),
        "w3-raw-async" => runtime.block_on(w3_raw_async(&masters, time)),
        "w3-raw-sync" => raw_sync(&masters, time),
        "w2-ring" => runtime.block_on(w2_ring(port, time)),
        _ => usage(),
    };
    println!("{} {rate:.0}", args[0]);
}

/// A command in RESP.
fn resp(parts: &[&str]) -> Vec<u8> {
    let mut out = format!("*{}\r\n", parts.len()).into_bytes();
    for part in parts {
        out.extend(format!("${}\r\n{part}\r\n", part.len()).as_bytes());
    }
    out
}

/// The floor's two commands in RESP, the script loaded on `port` first.
/// The floor's two commands in RESP, each with the reply a whole cycle gets (after
/// [`fresh_start`]).
fn floor_pair() -> [(Vec<u8>, &'static [u8]); 2] {
    let sha = redis::Script::new(RELEASE).get_hash().to_owned();
    [
        (
            resp(&["SET", KEY, "token", "NX", "PX", "10000"]),
            b"+OK\r\n",
        ),
        (resp(&["EVALSHA", &sha, "1", KEY, "token"]), b":1\r\n"),
    ]
}

/// Deletes the lock key (the previous mode may have left it set: every `SET NX` would then
/// fail and every compare answer 0, a different workload) and loads the release script.
fn fresh_start(port: u16) {
    let mut stream = sync_socket(port);
    for command in [resp(&["DEL", KEY]), resp(&["SCRIPT", "LOAD", RELEASE])] {
        stream.write_all(&command).expect("write");
        let _ = stream.read(&mut [0u8; 128]).expect("reply");
    }
}

fn sync_socket(port: u16) -> std::net::TcpStream {
    let stream = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect");
    stream.set_nodelay(true).expect("nodelay");
    stream
}

async fn async_socket(port: u16) -> tokio::net::TcpStream {
    let stream = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("connect");
    stream.set_nodelay(true).expect("nodelay");
    stream
}

/// Fails loudly unless `reply` is exactly `expected`: a partial read, an error or a refused
/// `SET NX` would otherwise count as a cycle.
fn check(reply: &[u8], expected: &[u8]) {
    assert_eq!(
        reply,
        expected,
        "unexpected reply {:?}",
        String::from_utf8_lossy(reply)
    );
}

/// Counts cycles until its time has passed.
struct Rate {
    started: Instant,
    time: Duration,
    cycles: u64,
}

impl Rate {
    fn new(time: Duration) -> Rate {
        Rate {
            started: Instant::now(),
            time,
            cycles: 0,
        }
    }

    /// Whether to run another cycle (counting the one just run).
    fn go(&mut self) -> bool {
        self.cycles += 1;
        self.started.elapsed() < self.time
    }

    fn per_second(&self) -> f64 {
        (self.cycles - 1) as f64 / self.started.elapsed().as_secs_f64()
    }
}

async fn w1_raw_async(port: u16, time: Duration) -> f64 {
    fresh_start(port);
    let pair = floor_pair();
    let mut stream = async_socket(port).await;
    let mut reply = [0u8; 256];
    let mut rate = Rate::new(time);
    while rate.go() {
        for (request, expected) in &pair {
            stream.write_all(request).await.expect("write");
            let read = stream.read(&mut reply).await.expect("read");
            check(&reply[..read], expected);
        }
    }
    rate.per_second()
}

async fn connect(port: u16) -> redis::aio::MultiplexedConnection {
    redis::Client::open(format!("redis://127.0.0.1:{port}/"))
        .expect("a URL")
        .get_multiplexed_async_connection()
        .await
        .expect("connect")
}

async fn set_nx(mut connection: redis::aio::MultiplexedConnection) {
    let set: Option<String> = redis::cmd("SET")
        .arg(KEY)
        .arg("token")
        .arg("NX")
        .arg("PX")
        .arg(10_000)
        .query_async(&mut connection)
        .await
        .expect("SET");
    assert_eq!(set.as_deref(), Some("OK"), "SET NX refused");
}

async fn release(script: &redis::Script, mut connection: redis::aio::MultiplexedConnection) {
    let released: i64 = script
        .key(KEY)
        .arg("token")
        .invoke_async(&mut connection)
        .await
        .expect("EVALSHA");
    assert_eq!(released, 1, "the compare-and-delete found another token");
}

async fn w1_redis_rs(port: u16, time: Duration) -> f64 {
    fresh_start(port);
    let connection = connect(port).await;
    let script = redis::Script::new(RELEASE);
    let mut rate = Rate::new(time);
    while rate.go() {
        set_nx(connection.clone()).await;
        release(&script, connection.clone()).await;
    }
    rate.per_second()
}

async fn w1_redis_rs_driven(port: u16, time: Duration) -> f64 {
    fresh_start(port);
    let stream = async_socket(port).await;
    let info = redis::RedisConnectionInfo::default();
    let (connection, driver) = redis::aio::MultiplexedConnection::new(&info, stream)
        .await
        .expect("a connection");
    let script = redis::Script::new(RELEASE);
    let cycles = async {
        let mut rate = Rate::new(time);
        while rate.go() {
            set_nx(connection.clone()).await;
            release(&script, connection.clone()).await;
        }
        rate.per_second()
    };
    tokio::select! {
        rate = cycles => rate,
        () = driver => panic!("the connection's driver ended"),
    }
}

async fn w3_redis_rs(ports: &[u16], time: Duration) -> f64 {
    ports.iter().for_each(|&port| fresh_start(port));
    let connections = join_all(ports.iter().map(|&port| connect(port))).await;
    let script = redis::Script::new(RELEASE);
    let mut rate = Rate::new(time);
    while rate.go() {
        join_all(connections.iter().cloned().map(set_nx)).await;
        join_all(connections.iter().cloned().map(|c| release(&script, c))).await;
    }
    rate.per_second()
}

/// Each step written to every server in `ports`, then every reply read, on blocking sockets
/// (W1 with one port, W3 with five).
fn raw_sync(ports: &[u16], time: Duration) -> f64 {
    ports.iter().for_each(|&port| fresh_start(port));
    let pair = floor_pair();
    let mut streams: Vec<_> = ports.iter().map(|&port| sync_socket(port)).collect();
    let mut reply = [0u8; 64];
    let mut rate = Rate::new(time);
    while rate.go() {
        for (request, expected) in &pair {
            for stream in streams.iter_mut() {
                stream.write_all(request).expect("write");
            }
            for stream in streams.iter_mut() {
                let read = stream.read(&mut reply).expect("read");
                check(&reply[..read], expected);
            }
        }
    }
    rate.per_second()
}

async fn w3_raw_async(ports: &[u16], time: Duration) -> f64 {
    ports.iter().for_each(|&port| fresh_start(port));
    let pair = floor_pair();
    let mut streams = join_all(ports.iter().map(|&port| async_socket(port))).await;
    let mut rate = Rate::new(time);
    while rate.go() {
        for (request, expected) in &pair {
            for stream in streams.iter_mut() {
                stream.write_all(request).await.expect("write");
            }
            join_all(streams.iter_mut().map(|stream| async move {
                let mut reply = [0u8; 64];
                let read = stream.read(&mut reply).await.expect("read");
                check(&reply[..read], expected);
            }))
            .await;
        }
    }
    rate.per_second()
}

async fn w2_ring(port: u16, time: Duration) -> f64 {
    const WORKERS: usize = 8;
    fresh_start(port);
    let connection = connect(port).await;
    let _: () = redis::cmd("SET")
        .arg(KEY)
        .arg(0)
        .query_async(&mut connection.clone())
        .await
        .expect("SET");
    let (senders, receivers): (Vec<_>, Vec<_>) = (0..WORKERS)
        .map(|_| tokio::sync::mpsc::unbounded_channel::<u64>())
        .unzip();
    let deadline = Instant::now() + time;
    let mut workers = Vec::new();
    for (i, mut turn) in receivers.into_iter().enumerate() {
        let next = senders[(i + 1) % WORKERS].clone();
        let mut connection = connection.clone();
        workers.push(tokio::spawn(async move {
            let script = redis::Script::new(HAND_OFF);
            let mut grants = 0u64;
            while let Some(token) = turn.recv().await {
                if Instant::now() > deadline {
                    break;
                }
                // The critical section, as in the peer bench's W2: one yield.
                tokio::task::yield_now().await;
                let handed: i64 = script
                    .key(KEY)
                    .arg(token)
                    .arg(token + 1)
                    .invoke_async(&mut connection)
                    .await
                    .expect("EVALSHA");
                assert_eq!(handed, 1, "the ring lost its lock");
                grants += 1;
                if next.send(token + 1).is_err() {
                    break;
                }
            }
            grants
        }));
    }
    let started = Instant::now();
    senders[0].send(0).expect("the first worker");
    drop(senders);
    let mut grants = 0;
    for worker in workers {
        grants += worker.await.expect("a worker");
    }
    grants as f64 / started.elapsed().as_secs_f64()
}

/// p50 and p99 of starting `program` and waiting for it, against this binary's `noop`,
/// alternated, 300 runs each.
fn process_start(program: &[String]) {
    let me = std::env::current_exe().expect("this binary");
    let mut theirs = Vec::new();
    let mut noop = Vec::new();
    let time = |command: &mut std::process::Command| {
        let started = Instant::now();
        let status = command
            .stdout(std::process::Stdio::null())
            .status()
            .expect("spawn");
        assert!(status.success(), "{command:?}: {status}");
        started.elapsed().as_secs_f64() * 1e3
    };
    for _ in 0..300 {
        theirs.push(time(
            std::process::Command::new(&program[0]).args(&program[1..]),
        ));
        noop.push(time(std::process::Command::new(&me).arg("noop")));
    }
    for (name, mut runs) in [(program.join(" "), theirs), ("noop".to_owned(), noop)] {
        runs.sort_by(f64::total_cmp);
        let p50 = runs[runs.len() / 2];
        let p99 = runs[runs.len() * 99 / 100];
        println!("process-start {name}: p50 {p50:.2} ms, p99 {p99:.2} ms");
    }
}
