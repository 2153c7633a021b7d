//! A TCP proxy on loopback that can cut or delay a link: network partitions between one client
//! and a server, while other clients still reach it.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread;
use std::time::Duration;

#[derive(Debug, Default)]
struct Link {
    /// Traffic is dropped in both directions (sockets stay open: a black hole, as a real
    /// partition looks, so clients time out instead of seeing a reset).
    cut: bool,
    /// Added before forwarding each chunk.
    delay: Duration,
}

/// Forwards `127.0.0.1:<port>` to a target port until dropped.
#[derive(Debug)]
pub struct TcpProxy {
    port: u16,
    link: Arc<Mutex<Link>>,
    stop: Arc<AtomicBool>,
}

impl TcpProxy {
    /// Starts forwarding a free loopback port to `127.0.0.1:<target>`.
    ///
    /// # Panics
    /// When no loopback port can be bound.
    pub fn start(target: u16) -> TcpProxy {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the proxy's port");
        let port = listener.local_addr().expect("proxy address").port();
        let link = Arc::new(Mutex::new(Link::default()));
        let stop = Arc::new(AtomicBool::new(false));
        listener.set_nonblocking(true).expect("non-blocking accept");
        let (accept_link, accept_stop) = (link.clone(), stop.clone());
        thread::spawn(move || {
            while !accept_stop.load(Ordering::SeqCst) {
                match listener.accept() {
                    Ok((client, _)) => {
                        let _ = client.set_nonblocking(false);
                        if let Ok(server) = TcpStream::connect(("127.0.0.1", target)) {
                            pipe(client, server, &accept_link, &accept_stop);
                        }
                    }
                    Err(_) => thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        TcpProxy { port, link, stop }
    }

    /// The proxy's loopback port (e.g. for a replica's `--replicaof`).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `redis://127.0.0.1:<proxy port>/`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    /// Drops all traffic both ways until [`TcpProxy::heal`].
    pub fn cut(&self) {
        self.link.lock().unwrap_or_else(PoisonError::into_inner).cut = true;
    }

    /// Forwards traffic again (what was dropped meanwhile stays lost).
    pub fn heal(&self) {
        self.link.lock().unwrap_or_else(PoisonError::into_inner).cut = false;
    }

    /// Delays every forwarded chunk by `delay`.
    pub fn delay(&self, delay: Duration) {
        self.link
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .delay = delay;
    }
}

impl Drop for TcpProxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

/// Copies both directions on two threads, obeying the link's state.
fn pipe(client: TcpStream, server: TcpStream, link: &Arc<Mutex<Link>>, stop: &Arc<AtomicBool>) {
    for (mut from, mut to) in [
        (client.try_clone(), server.try_clone()),
        (server.try_clone(), client.try_clone()),
    ]
    .into_iter()
    .filter_map(|(a, b)| Some((a.ok()?, b.ok()?)))
    {
        let (link, stop) = (link.clone(), stop.clone());
        thread::spawn(move || {
            let _ = from.set_read_timeout(Some(Duration::from_millis(50)));
            let mut buffer = [0u8; 16 * 1024];
            while !stop.load(Ordering::SeqCst) {
                let read = match from.read(&mut buffer) {
                    Ok(0) => break,
                    Ok(n) => n,
                    Err(e)
                        if matches!(
                            e.kind(),
                            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                        ) =>
                    {
                        continue
                    }
                    Err(_) => break,
                };
                let (cut, delay) = {
                    let link = link.lock().unwrap_or_else(PoisonError::into_inner);
                    (link.cut, link.delay)
                };
                if cut {
                    continue;
                }
                if !delay.is_zero() {
                    thread::sleep(delay);
                }
                if to.write_all(&buffer[..read]).is_err() {
                    break;
                }
            }
            let _ = to.shutdown(Shutdown::Both);
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::RedisServer;

    #[test]
    fn the_proxy_forwards_then_cuts_then_heals() {
        let server = RedisServer::start();
        let proxy = TcpProxy::start(server.port());
        let client = redis::Client::open(proxy.url()).expect("url");
        let mut con = client.get_connection().expect("through the proxy");
        let pong: String = redis::cmd("PING").query(&mut con).expect("ping");
        assert_eq!(pong, "PONG");
        proxy.cut();
        con.set_read_timeout(Some(Duration::from_millis(200)))
            .expect("timeout");
        assert!(
            redis::cmd("PING").query::<String>(&mut con).is_err(),
            "a cut link answers"
        );
        proxy.heal();
        let mut fresh = client.get_connection().expect("healed");
        let pong: String = redis::cmd("PING")
            .query(&mut fresh)
            .expect("ping after heal");
        assert_eq!(pong, "PONG");
    }
}
