//! One connection to a Redis server, shared by every caller of one store (rate-limit
//! counters, the shared response cache), with the failure rules both need.
//!
//! - Every command is bounded by the store's timeout, and so is every connect: a call waits
//!   at most one timeout for a connect (its own, or one in progress) and one for its reply.
//! - The connection is multiplexed: concurrent calls share one socket, and one slow call
//!   does not hold the others behind a lock.
//! - A broken connection (the server went away, or a call timed out) is dropped; the next
//!   call connects again, but connects are tried at most once a second: in between, calls
//!   fail at once with [`RedisError::Unavailable`], so a dead Redis costs requests nothing
//!   but their fallback, never a connect timeout each.
//! - Failures are logged at most once a second per store ([`RedisConn::warn`]), so an outage
//!   logs a line a second, not a line a request.
//!
//! A connection dropped here is not closed under the calls still using it: each call holds
//! its own handle, so a call in flight finishes (or times out) on the old socket.

use crate::sync::lock;
use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, FromRedisValue, ScriptInvocation};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Shortest time between two connects to one server.
const RECONNECT_INTERVAL_MS: u64 = 1000;
/// Shortest time between two warnings of one store.
const WARNING_INTERVAL_MS: u64 = 1000;

/// Why a Redis call failed.
#[derive(Debug)]
pub enum RedisError {
    /// Not connected, and not retrying yet (the last connect was less than a second ago).
    Unavailable,
    /// The call (or the connect) took longer than the timeout.
    Timeout,
    /// Redis answered with an error, or the connection broke.
    Redis(String),
}

impl std::fmt::Display for RedisError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RedisError::Unavailable => f.write_str("not connected"),
            RedisError::Timeout => f.write_str("timed out"),
            RedisError::Redis(e) => write!(f, "{e}"),
        }
    }
}

/// A Redis server and the connection to it (see the module documentation).
pub struct RedisConn {
    client: redis::Client,
    timeout: Duration,
    /// The current connection, if one is open and not known to be broken.
    conn: Mutex<Option<MultiplexedConnection>>,
    /// Held while connecting, so concurrent calls share one connect (and wait at most its
    /// timeout) instead of opening one each.
    connecting: tokio::sync::Mutex<()>,
    /// Milliseconds since `epoch` (plus one, so 0 means never) of the last connect tried.
    last_connect_ms: AtomicU64,
    /// Milliseconds since `epoch` (plus one) of the last warning logged.
    last_warning_ms: AtomicU64,
    epoch: Instant,
}

impl RedisConn {
    /// A store for `url` (`redis://…`, `rediss://…`, `unix://…`) whose calls take at most
    /// `timeout`; nothing connects until the first call. Err: the URL is invalid.
    pub fn open(url: &str, timeout: Duration) -> Result<RedisConn, String> {
        let client = redis::Client::open(url).map_err(|e| format!("invalid Redis URL: {e}"))?;
        Ok(RedisConn {
            client,
            timeout,
            conn: Mutex::new(None),
            connecting: tokio::sync::Mutex::new(()),
            last_connect_ms: AtomicU64::new(0),
            last_warning_ms: AtomicU64::new(0),
            epoch: Instant::now(),
        })
    }

    /// The server's address, for log lines (never the password).
    pub fn addr(&self) -> String {
        self.client.get_connection_info().addr().to_string()
    }

    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64 + 1
    }

    fn current(&self) -> Option<MultiplexedConnection> {
        lock(&self.conn).clone()
    }

    /// The open connection, or a new one (at most one connect a second).
    pub async fn connection(&self) -> Result<MultiplexedConnection, RedisError> {
        if let Some(c) = self.current() {
            return Ok(c);
        }
        // One connect at a time: a call arriving during one waits for its result (at most the
        // timeout) rather than being refused as "too soon" by it.
        let _connecting = tokio::time::timeout(self.timeout, self.connecting.lock())
            .await
            .map_err(|_| RedisError::Timeout)?;
        if let Some(c) = self.current() {
            return Ok(c);
        }
        if self.too_soon() {
            return Err(RedisError::Unavailable);
        }
        self.last_connect_ms.store(self.now_ms(), Ordering::Relaxed);
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(self.timeout))
            .set_response_timeout(Some(self.timeout));
        let conn = tokio::time::timeout(
            self.timeout,
            self.client
                .get_multiplexed_async_connection_with_config(&config),
        )
        .await
        .map_err(|_| RedisError::Timeout)?
        .map_err(|e| RedisError::Redis(e.to_string()))?;
        *lock(&self.conn) = Some(conn.clone());
        Ok(conn)
    }

    fn too_soon(&self) -> bool {
        let last = self.last_connect_ms.load(Ordering::Relaxed);
        last != 0 && self.now_ms().saturating_sub(last) < RECONNECT_INTERVAL_MS
    }

    /// Forget the connection: the next call connects again (when a second has passed since
    /// the last connect).
    fn drop_connection(&self) {
        lock(&self.conn).take();
    }

    /// Run a Lua script (loaded on first use), bounded by the timeout. A broken connection
    /// or a timeout drops the connection.
    pub async fn invoke<T: FromRedisValue>(
        &self,
        inv: &ScriptInvocation<'_>,
    ) -> Result<T, RedisError> {
        let mut conn = self.connection().await?;
        let result = tokio::time::timeout(self.timeout, inv.invoke_async(&mut conn)).await;
        self.settle(result)
    }

    /// Run one command, bounded by the timeout (as [`RedisConn::invoke`]).
    pub async fn query<T: FromRedisValue>(&self, cmd: &redis::Cmd) -> Result<T, RedisError> {
        let mut conn = self.connection().await?;
        let result = tokio::time::timeout(self.timeout, cmd.query_async(&mut conn)).await;
        self.settle(result)
    }

    fn settle<T>(
        &self,
        result: Result<redis::RedisResult<T>, tokio::time::error::Elapsed>,
    ) -> Result<T, RedisError> {
        match result {
            Err(_) => {
                // A reply later than the timeout: the next call gets a fresh connection
                // rather than queueing behind this one.
                self.drop_connection();
                Err(RedisError::Timeout)
            }
            Ok(Err(e)) => {
                if e.is_io_error()
                    || e.is_connection_dropped()
                    || e.is_unrecoverable_error()
                    || e.is_timeout()
                {
                    self.drop_connection();
                }
                Err(RedisError::Redis(e.to_string()))
            }
            Ok(Ok(v)) => Ok(v),
        }
    }

    /// Log `error` as a warning of `what` (e.g. "rate-limit store"), at most once a second.
    pub fn warn(&self, what: &str, error: &dyn std::fmt::Display) {
        let now = self.now_ms();
        let last = self.last_warning_ms.load(Ordering::Relaxed);
        if last == 0 || now.saturating_sub(last) >= WARNING_INTERVAL_MS {
            self.last_warning_ms.store(now, Ordering::Relaxed);
            log::warn!("{what} {}: {error}", self.addr());
        }
    }
}
