//! One real `redis-server` process per [`RedisServer`], owned by the test that started it.

use std::fs;
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

/// How long a starting server may take to answer `PING` before the start is a failure.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(15);
/// How often a free port is drawn again when a server could not bind the one it was given
/// (another process took it between our probe and the server's bind).
const PORT_ATTEMPTS: usize = 5;

/// Where the `redis-server` binary is: `$DLOCK_REDIS_SERVER`, else `redis-server` on `PATH`.
///
/// # Panics
/// When neither exists, with a message that says how to install it.
pub fn find_redis_server() -> PathBuf {
    if let Some(path) = std::env::var_os("DLOCK_REDIS_SERVER") {
        let path = PathBuf::from(path);
        assert!(
            path.is_file(),
            "DLOCK_REDIS_SERVER={} is not a file; point it at a redis-server binary",
            path.display()
        );
        return path;
    }
    let on_path = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join("redis-server"))
            .find(|candidate| candidate.is_file())
    });
    on_path.unwrap_or_else(|| {
        panic!(
            "redis-server not found: dlock's tests start their own Redis servers. Install it \
             (Debian/Ubuntu: `sudo apt-get install redis-server`, macOS: `brew install redis`) or \
             set DLOCK_REDIS_SERVER to the binary's path"
        )
    })
}

/// Settings for a server to start; [`RedisServer::start`] uses the defaults.
#[derive(Debug, Clone, Default)]
pub struct ServerOptions {
    /// `requirepass` for the default user (ACL tests).
    pub password: Option<String>,
    /// Extra `--name value` arguments given to `redis-server` as they are.
    pub extra_args: Vec<String>,
    /// Serve TLS only (self-signed certificate made with `openssl`); [`RedisServer::url`] is
    /// then `rediss://…/#insecure` (no certificate verification: the cert is throwaway).
    pub tls: bool,
}

/// A running `redis-server` on `127.0.0.1:<port>`, killed (and waited for) on drop.
#[derive(Debug)]
pub struct RedisServer {
    child: Option<Child>,
    port: u16,
    options: ServerOptions,
    dir: tempfile::TempDir,
    paused: bool,
}

impl RedisServer {
    /// Starts a server with default settings on a free port.
    pub fn start() -> Self {
        Self::start_with(ServerOptions::default())
    }

    /// Starts a server with `options` on a free port.
    ///
    /// # Panics
    /// When the server cannot be started, with its log.
    pub fn start_with(options: ServerOptions) -> Self {
        let mut last_log = String::new();
        for _ in 0..PORT_ATTEMPTS {
            let dir = tempfile::Builder::new()
                .prefix("dlock-redis-")
                .tempdir()
                .expect("create a temp dir for redis-server");
            let mut server = RedisServer {
                child: None,
                port: free_port(),
                options: options.clone(),
                dir,
                paused: false,
            };
            match server.spawn_and_wait() {
                Ok(()) => return server,
                Err(log) => last_log = log,
            }
        }
        panic!("redis-server failed to start {PORT_ATTEMPTS} times; last log:\n{last_log}");
    }

    /// Starts a replica of `master` and waits until its replication link is up.
    ///
    /// # Panics
    /// When it cannot start or does not sync within the start-up timeout, with its log.
    pub fn start_replica_of(master: &RedisServer) -> Self {
        let mut extra_args = vec![
            "--replicaof".to_owned(),
            "127.0.0.1".to_owned(),
            master.port().to_string(),
        ];
        if let Some(password) = &master.options.password {
            extra_args.extend(["--masterauth".to_owned(), password.clone()]);
        }
        let replica = RedisServer::start_with(ServerOptions {
            password: master.options.password.clone(),
            extra_args,
            ..ServerOptions::default()
        });
        let deadline = Instant::now() + STARTUP_TIMEOUT;
        loop {
            let info: String = replica.cmd("INFO", &["replication"]);
            if info.contains("master_link_status:up") {
                return replica;
            }
            assert!(
                Instant::now() < deadline,
                "replica on port {} never synced:\n{info}\n{}",
                replica.port(),
                replica.log()
            );
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// `redis://127.0.0.1:<port>/` (with the password when one is set; `rediss://…#insecure`
    /// for a TLS server).
    pub fn url(&self) -> String {
        server_url(
            self.port,
            self.options.password.as_deref(),
            self.options.tls,
        )
    }

    /// A TLS server's CA certificate in PEM, to trust it as a root; and the server's URL
    /// without `#insecure`, so its certificate is really verified.
    ///
    /// # Panics
    /// For a server started without TLS.
    pub fn tls_certificate(&self) -> (Vec<u8>, String) {
        assert!(self.options.tls, "not a TLS server");
        let pem = fs::read(self.dir.path().join("ca.pem")).expect("the server's CA certificate");
        (pem, format!("rediss://127.0.0.1:{}/", self.port))
    }

    /// The loopback port the server listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The server's process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// A fresh synchronous connection, for the test's own inspection of the server.
    ///
    /// # Panics
    /// When the server does not answer.
    pub fn connection(&self) -> redis::Connection {
        let client = redis::Client::open(self.url()).expect("test kit builds valid URLs");
        client
            .get_connection_with_timeout(Duration::from_secs(5))
            .unwrap_or_else(|e| panic!("connect to {}: {e}\n{}", self.port, self.log()))
    }

    /// Runs one command on a fresh connection and returns its reply.
    pub fn cmd<T: redis::FromRedisValue>(&self, name: &str, args: &[&str]) -> T {
        self.try_cmd(name, args)
            .unwrap_or_else(|e| panic!("{name} {args:?} on port {}: {e}", self.port))
    }

    /// Runs one command on a fresh connection; the server's error reply is an error.
    pub fn try_cmd<T: redis::FromRedisValue>(
        &self,
        name: &str,
        args: &[&str],
    ) -> redis::RedisResult<T> {
        let mut con = self.connection();
        let mut cmd = redis::cmd(name);
        for arg in args {
            cmd.arg(*arg);
        }
        cmd.query(&mut con)
    }

    /// How many times the server has executed `command` (lower case, e.g. `"evalsha"`), from
    /// `INFO commandstats`; 0 when it never ran.
    pub fn command_calls(&self, command: &str) -> u64 {
        let info: String = self.cmd("INFO", &["commandstats"]);
        parse_command_calls(&info, command)
    }

    /// Script calls the server has run: `EVALSHA`, and `EVAL` should its script cache be cold.
    pub fn script_calls(&self) -> u64 {
        self.command_calls("evalsha") + self.command_calls("eval")
    }

    /// How many error replies starting with `code` (e.g. `"TRYAGAIN"`) the server has sent,
    /// from `INFO errorstats`; 0 when none.
    pub fn error_replies(&self, code: &str) -> u64 {
        let info: String = self.cmd("INFO", &["errorstats"]);
        parse_stat(&info, &format!("errorstat_{code}:"), "count=")
    }

    /// The server's log so far (for assertion messages).
    pub fn log(&self) -> String {
        fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// SIGKILL: the server vanishes at once, with everything it held in memory.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            if self.paused {
                // A stopped process still dies of SIGKILL; resume bookkeeping only.
                self.paused = false;
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Whether the server process is running (not killed).
    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    /// SIGSTOP: the server stops answering but keeps its sockets open, like a long GC pause or
    /// a frozen VM. Its clock keeps running, so keys still expire by wall time once resumed.
    pub fn pause(&mut self) {
        self.signal(Signal::SIGSTOP);
        self.paused = true;
    }

    /// SIGCONT after [`RedisServer::pause`].
    pub fn resume(&mut self) {
        self.signal(Signal::SIGCONT);
        self.paused = false;
    }

    /// Kills the server (SIGKILL) and starts a new, empty one on the same port: a restart that
    /// lost all data (no persistence).
    ///
    /// # Panics
    /// When the new server cannot start, with its log.
    pub fn restart_empty(&mut self) {
        self.kill();
        let _ = fs::remove_file(self.dir.path().join("dump.rdb"));
        // The port was ours a moment ago; it is free again as soon as the old process is reaped.
        let deadline = Instant::now() + STARTUP_TIMEOUT;
        loop {
            match self.spawn_and_wait() {
                Ok(()) => return,
                Err(log) if Instant::now() > deadline => {
                    panic!("redis-server did not restart on port {}:\n{log}", self.port)
                }
                Err(_) => thread::sleep(Duration::from_millis(50)),
            }
        }
    }

    /// Makes the server busy for `duration` with `DEBUG SLEEP` (it answers nobody meanwhile),
    /// without blocking the caller.
    pub fn debug_sleep(&self, duration: Duration) -> thread::JoinHandle<()> {
        let mut con = self.connection();
        let seconds = format!("{:.3}", duration.as_secs_f64());
        thread::spawn(move || {
            let _: redis::RedisResult<()> = redis::cmd("DEBUG")
                .arg("SLEEP")
                .arg(seconds)
                .query(&mut con);
        })
    }

    /// `CLIENT PAUSE <ms> ALL`: every client's commands wait for `duration`.
    pub fn client_pause(&self, duration: Duration) {
        let ms = duration.as_millis().to_string();
        let _: () = self.cmd("CLIENT", &["PAUSE", &ms, "ALL"]);
    }

    /// A throwaway CA and a server certificate for 127.0.0.1 signed by it, in the server's
    /// directory: returns (certificate, key). A real chain, so clients that verify it (rustls
    /// refuses a self-signed CA used as the server's own certificate) can trust the CA.
    fn self_signed_certificate(&self) -> (PathBuf, PathBuf) {
        let dir = self.dir.path();
        let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
        if cert.is_file() && key.is_file() {
            return (cert, key);
        }
        fs::write(
            dir.join("server.ext"),
            "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n",
        )
        .expect("write the certificate extensions");
        let steps: [&[&str]; 3] = [
            &[
                "req",
                "-x509",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-days",
                "1",
                "-subj",
                "/CN=dlock-test-ca",
                "-keyout",
                "ca.key",
                "-out",
                "ca.pem",
                "-addext",
                "basicConstraints=critical,CA:TRUE",
                "-addext",
                "keyUsage=critical,keyCertSign,cRLSign",
            ],
            &[
                "req",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-subj",
                "/CN=127.0.0.1",
                "-keyout",
                "key.pem",
                "-out",
                "server.csr",
            ],
            &[
                "x509",
                "-req",
                "-in",
                "server.csr",
                "-CA",
                "ca.pem",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-days",
                "1",
                "-out",
                "cert.pem",
                "-extfile",
                "server.ext",
            ],
        ];
        for args in steps {
            let status = Command::new("openssl")
                .args(args)
                .current_dir(dir)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .unwrap_or_else(|e| panic!("TLS tests need the openssl command: {e}"));
            assert!(status.success(), "openssl {args:?} failed: {status}");
        }
        (cert, key)
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("redis.log")
    }

    fn signal(&self, signal: Signal) {
        let pid = self.pid().expect("signal a server that is running");
        let pid = Pid::from_raw(i32::try_from(pid).expect("pid fits i32"));
        kill(pid, signal).unwrap_or_else(|e| panic!("{signal} to redis-server: {e}"));
    }

    /// Starts the process on `self.port` and waits until it answers; on failure returns the
    /// server's log (the process is reaped).
    fn spawn_and_wait(&mut self) -> Result<(), String> {
        let binary = find_redis_server();
        let mut command = Command::new(&binary);
        command
            .arg("--port")
            .arg(self.port.to_string())
            .args(["--bind", "127.0.0.1"])
            .args(["--save", ""])
            .args(["--appendonly", "no"])
            .args(["--daemonize", "no"])
            .args(["--enable-debug-command", "yes"])
            .arg("--dir")
            .arg(self.dir.path())
            .arg("--logfile")
            .arg(self.log_path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        if let Some(password) = &self.options.password {
            command.args(["--requirepass", password]);
        }
        if self.options.tls {
            let (cert, key) = self.self_signed_certificate();
            command
                .args(["--port", "0", "--tls-port", &self.port.to_string()])
                .arg("--tls-cert-file")
                .arg(&cert)
                .arg("--tls-key-file")
                .arg(&key)
                .arg("--tls-ca-cert-file")
                .arg(self.dir.path().join("ca.pem"))
                .args(["--tls-auth-clients", "no"]);
        }
        command.args(&self.options.extra_args);
        let mut child = command
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {}: {e}", binary.display()));
        let deadline = Instant::now() + STARTUP_TIMEOUT;
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                let mut log = self.log();
                if let Some(mut stderr) = child.stderr.take() {
                    use std::io::Read;
                    let _ = stderr.read_to_string(&mut log);
                }
                return Err(format!("redis-server exited with {status}:\n{log}"));
            }
            if answers_ping(&self.url()) {
                self.child = Some(child);
                return Ok(());
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!(
                    "redis-server did not answer PING within {STARTUP_TIMEOUT:?}:\n{}",
                    self.log()
                ));
            }
            thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// N independent servers (no replication between them), as Redlock needs.
#[derive(Debug)]
pub struct RedisServers {
    servers: Vec<RedisServer>,
}

impl RedisServers {
    /// Starts `n` servers on distinct free ports.
    pub fn start(n: usize) -> Self {
        RedisServers {
            servers: (0..n).map(|_| RedisServer::start()).collect(),
        }
    }

    /// Every server's URL, in order.
    pub fn urls(&self) -> Vec<String> {
        self.servers.iter().map(RedisServer::url).collect()
    }
}

impl std::ops::Deref for RedisServers {
    type Target = [RedisServer];
    fn deref(&self) -> &[RedisServer] {
        &self.servers
    }
}

impl std::ops::DerefMut for RedisServers {
    fn deref_mut(&mut self) -> &mut [RedisServer] {
        &mut self.servers
    }
}

/// A port that was free a moment ago: bind port 0 and let the OS pick.
pub(crate) fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind a loopback port");
    listener.local_addr().expect("local address").port()
}

fn server_url(port: u16, password: Option<&str>, tls: bool) -> String {
    let scheme = if tls { "rediss" } else { "redis" };
    let auth = password.map(|p| format!(":{p}@")).unwrap_or_default();
    let fragment = if tls { "#insecure" } else { "" };
    format!("{scheme}://{auth}127.0.0.1:{port}/{fragment}")
}

fn answers_ping(url: &str) -> bool {
    let Ok(client) = redis::Client::open(url) else {
        return false;
    };
    match client.get_connection_with_timeout(Duration::from_millis(500)) {
        Ok(mut con) => {
            let _ = con.set_read_timeout(Some(Duration::from_millis(500)));
            redis::cmd("PING").query::<String>(&mut con).is_ok()
        }
        Err(_) => false,
    }
}

fn parse_command_calls(info: &str, command: &str) -> u64 {
    parse_stat(info, &format!("cmdstat_{command}:"), "calls=")
}

/// The number in field `field` (e.g. `calls=`) of the `INFO` line that starts with `prefix`;
/// 0 when there is no such line.
fn parse_stat(info: &str, prefix: &str, field: &str) -> u64 {
    info.lines()
        .find_map(|line| line.strip_prefix(prefix))
        .and_then(|stats| {
            stats
                .split(',')
                .find_map(|f| f.strip_prefix(field))
                .and_then(|n| n.parse().ok())
        })
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_commandstats_calls() {
        let info = "# Commandstats\r\ncmdstat_evalsha:calls=42,usec=1,usec_per_call=0.1\r\n\
                    cmdstat_ping:calls=3,usec=0";
        assert_eq!(parse_command_calls(info, "evalsha"), 42);
        assert_eq!(parse_command_calls(info, "ping"), 3);
        assert_eq!(parse_command_calls(info, "set"), 0);
        let errors = "# Errorstats\r\nerrorstat_TRYAGAIN:count=7\r\nerrorstat_MOVED:count=2";
        assert_eq!(parse_stat(errors, "errorstat_TRYAGAIN:", "count="), 7);
        assert_eq!(parse_stat(errors, "errorstat_ASK:", "count="), 0);
    }

    #[test]
    fn server_starts_answers_and_dies_on_drop() {
        let server = RedisServer::start();
        let pong: String = server.cmd("PING", &[]);
        assert_eq!(pong, "PONG");
        let port = server.port();
        drop(server);
        assert!(
            !answers_ping(&server_url(port, None, false)),
            "server still answers after drop"
        );
    }

    #[test]
    fn restart_empty_loses_data_and_keeps_port() {
        let mut server = RedisServer::start();
        let _: () = server.cmd("SET", &["k", "v"]);
        let port = server.port();
        server.restart_empty();
        assert_eq!(server.port(), port);
        let value: Option<String> = server.cmd("GET", &["k"]);
        assert_eq!(value, None);
    }

    #[test]
    fn pause_stops_answers_until_resume() {
        let mut server = RedisServer::start();
        let mut con = server.connection();
        server.pause();
        con.set_read_timeout(Some(Duration::from_millis(200)))
            .expect("timeout");
        let reply: redis::RedisResult<String> = redis::cmd("PING").query(&mut con);
        assert!(reply.is_err(), "a stopped server answered: {reply:?}");
        server.resume();
        let pong: String = server.cmd("PING", &[]);
        assert_eq!(pong, "PONG");
    }

    #[test]
    fn tls_servers_answer_over_tls_only() {
        let server = RedisServer::start_with(ServerOptions {
            tls: true,
            ..ServerOptions::default()
        });
        assert!(server.url().starts_with("rediss://"));
        let pong: String = server.cmd("PING", &[]);
        assert_eq!(pong, "PONG");
        assert!(!answers_ping(&server_url(server.port(), None, false)));
    }

    #[test]
    fn password_is_required_when_set() {
        let server = RedisServer::start_with(ServerOptions {
            password: Some("s3cret".into()),
            ..ServerOptions::default()
        });
        let pong: String = server.cmd("PING", &[]);
        assert_eq!(pong, "PONG");
        let anonymous =
            redis::Client::open(format!("redis://127.0.0.1:{}/", server.port())).expect("url");
        let mut con = anonymous.get_connection().expect("connect");
        let reply: redis::RedisResult<String> = redis::cmd("GET").arg("k").query(&mut con);
        assert!(reply.is_err());
    }
}
