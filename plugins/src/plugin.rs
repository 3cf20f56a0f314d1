//! The plugin trait and the fixed phase order of a chain.

use crate::answer::Answer;
use crate::cache::policy::CachePolicy;
use crate::consumer::{Consumer, Identity};
use crate::context::RequestCtx;
use async_trait::async_trait;
use bytes::Bytes;
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::proxy::Session;
use std::sync::Arc;

/// Where a plugin runs in a route's chain. Chains are sorted by phase once, when the config is
/// compiled; within a phase, plugins keep the order they were listed in (global ones first).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Phase {
    /// Request ids and other bookkeeping that everything after may read.
    Init,
    /// IP allow/deny lists: decided before anything costs work.
    AccessControl,
    /// CORS preflight answers.
    Cors,
    /// Establishing who the caller is.
    Authentication,
    /// Deciding whether that caller may use the route.
    Authorization,
    /// Rate, concurrency and size limits.
    Limits,
    /// Request and response transforms.
    Transform,
    /// Response encoding (`compress`): its body hook sees what every transform produced.
    Encode,
    /// Plugins that answer instead of an upstream (`mock`): always last.
    Respond,
}

/// What the request hook decided.
#[derive(Debug)]
pub enum Flow {
    /// Go on with the next plugin, then the upstream.
    Continue,
    /// Stop the chain and send this response; response hooks still run on it.
    Respond(Answer),
}

/// What an authentication plugin found.
#[derive(Debug)]
pub enum Auth {
    /// The request carries valid credentials of this identity.
    Authenticated(Identity),
    /// The request carries no credentials this plugin reads; the answer says so (401).
    Missing(Answer),
    /// The request carries credentials this plugin reads, and they are wrong (401/403).
    Invalid(Answer),
}

/// A statically compiled plugin. One instance is built per place it is configured (a route, or
/// the global `[plugins.<name>]` table) when the config is compiled, and shared by every request
/// on that route, so hooks take `&self` and keep per-request state in [`RequestCtx`].
///
/// Every hook has a default that does nothing, so a plugin implements only the phases it needs.
#[async_trait]
pub trait Plugin: Send + Sync + 'static {
    /// The name the plugin is registered under (the TOML `name`).
    fn name(&self) -> &'static str;

    /// The phase this plugin runs in.
    fn phase(&self) -> Phase;

    /// Request phase, before any upstream is chosen: inspect the downstream request head and
    /// either continue or answer. Takes the head, not the session, so the hook can be unit
    /// tested without a server (see [`crate::testing`]).
    async fn request(&self, _req: &RequestHeader, _ctx: &mut RequestCtx) -> Flow {
        Flow::Continue
    }

    /// The same phase for the few plugins that need the live session (to read the request body
    /// before the upstream is chosen, or the connection's details). The gateway always calls
    /// this one; the default hands the request head to [`Plugin::request`].
    async fn request_session(&self, session: &mut Session, ctx: &mut RequestCtx) -> Flow {
        self.request(session.req_header(), ctx).await
    }

    /// Authentication phase only: establish who is calling. All authentication plugins of a
    /// route are alternatives: the first that returns [`Auth::Authenticated`] wins; if none
    /// does and no credentials were presented, the route's `anonymous` consumer is used when
    /// one is configured; otherwise the first [`Auth::Invalid`] answer (or, when no plugin
    /// found credentials, the first [`Auth::Missing`] one) is sent.
    async fn authenticate(&self, _req: &RequestHeader, _ctx: &mut RequestCtx) -> Auth {
        Auth::Missing(Answer::error(
            http::StatusCode::UNAUTHORIZED,
            "missing_credentials",
            "no credentials",
        ))
    }

    /// The consumer to use when no credentials are presented (`anonymous = "..."`).
    fn anonymous(&self) -> Option<&Arc<Consumer>> {
        None
    }

    /// The route's cache policy, for the `cache` plugin (the gateway runs Pingora's cache
    /// phases with it).
    fn cache_policy(&self) -> Option<&Arc<CachePolicy>> {
        None
    }

    /// Whether [`Plugin::request_body`] must be called (lets the gateway skip body hooks).
    fn wants_request_body(&self) -> bool {
        false
    }

    /// A chunk of the request body on its way upstream (`None` once the body has ended
    /// without more data). An answer aborts the request and is sent if nothing has been
    /// sent to the client yet.
    fn request_body(
        &self,
        _chunk: Option<&Bytes>,
        _end_of_stream: bool,
        _ctx: &mut RequestCtx,
    ) -> Option<Answer> {
        None
    }

    /// Change the request that is about to be sent upstream (headers, path).
    fn upstream_request(&self, _req: &mut RequestHeader, _ctx: &mut RequestCtx) {}

    /// Whether [`Plugin::upstream_response`] must be called (lets the gateway skip it).
    fn wants_upstream_response(&self) -> bool {
        false
    }

    /// The response head from the upstream (or the cache), before [`Plugin::response`] and
    /// before it is sent downstream; unlike `response` it may wait (call a service). An
    /// answer is sent instead of the response. Not called for answers made by plugins or
    /// the gateway.
    async fn upstream_response(
        &self,
        _resp: &mut ResponseHeader,
        _ctx: &mut RequestCtx,
    ) -> Option<Answer> {
        None
    }

    /// Change the response header before it is sent downstream. Runs for upstream responses and
    /// for answers made by plugins or the gateway on a matched route.
    fn response(&self, _resp: &mut ResponseHeader, _ctx: &mut RequestCtx) {}

    /// Whether [`Plugin::response_body`] must be called (lets the gateway skip body hooks and
    /// keep the zero-copy path for routes without them).
    fn wants_response_body(&self) -> bool {
        false
    }

    /// A chunk of the response body on its way to the client, streamed: called for each chunk
    /// as it arrives, in chain order, `end_of_stream` on the last call. Replace `*body` to
    /// change the chunk, set it to `None` to hold it back (keep it in `ctx.extensions` and
    /// release it on a later call, with a bound on what is held). A plugin that changes the
    /// body's length removes `Content-Length` in [`Plugin::response`]; the gateway then frames
    /// the body itself (chunked on HTTP/1.1).
    fn response_body(
        &self,
        _body: &mut Option<Bytes>,
        _end_of_stream: bool,
        _ctx: &mut RequestCtx,
    ) {
    }

    /// Called once the response is finished (or failed), with the final status (0 if none was
    /// sent); for counters and state that must be released.
    fn log(&self, _status: u16, _ctx: &mut RequestCtx) {}
}
