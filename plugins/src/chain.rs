//! Runs a route's request phase: each plugin in phase order, with the authentication plugins
//! of a route treated as alternatives.

use crate::answer::Answer;
use crate::consumer::Identity;
use crate::context::RequestCtx;
use crate::plugin::{Auth, Flow, Phase, Plugin};
use pingora::http::RequestHeader;
use pingora::proxy::Session;
use std::sync::Arc;

/// Why the request phase stopped early.
pub struct Stop {
    /// The answer to send.
    pub answer: Answer,
    /// The plugin that answered.
    pub plugin: &'static str,
    /// Its phase.
    pub phase: Phase,
}

/// What the request hooks are handed: the live session (the gateway) or a request head alone
/// (the unit-test harness, [`crate::testing`]).
pub enum Input<'a> {
    /// A request being served; plugins get [`Plugin::request_session`].
    Session(&'a mut Session),
    /// A request head only; plugins get [`Plugin::request`].
    Head(&'a RequestHeader),
}

impl Input<'_> {
    fn head(&self) -> &RequestHeader {
        match self {
            Input::Session(s) => s.req_header(),
            Input::Head(h) => h,
        }
    }

    async fn request(&mut self, plugin: &Arc<dyn Plugin>, ctx: &mut RequestCtx) -> Flow {
        match self {
            Input::Session(s) => plugin.request_session(s, ctx).await,
            Input::Head(h) => plugin.request(h, ctx).await,
        }
    }
}

/// Run the request hooks of `chain` (sorted by phase). `None` means: go on to the upstream.
pub async fn run_request(
    chain: &[Arc<dyn Plugin>],
    session: &mut Session,
    ctx: &mut RequestCtx,
) -> Option<Stop> {
    run(chain, Input::Session(session), ctx).await
}

/// Run the request hooks of `chain` on `input`. `None` means: go on to the upstream.
pub async fn run(
    chain: &[Arc<dyn Plugin>],
    mut input: Input<'_>,
    ctx: &mut RequestCtx,
) -> Option<Stop> {
    let mut i = 0;
    while i < chain.len() {
        let plugin = &chain[i];
        if plugin.phase() == Phase::Authentication {
            let n = chain[i..]
                .iter()
                .take_while(|p| p.phase() == Phase::Authentication)
                .count();
            if let Some(stop) = authenticate(&chain[i..i + n], input.head(), ctx).await {
                return Some(stop);
            }
            i += n;
            continue;
        }
        if let Flow::Respond(answer) = input.request(plugin, ctx).await {
            return Some(Stop {
                answer,
                plugin: plugin.name(),
                phase: plugin.phase(),
            });
        }
        i += 1;
    }
    None
}

async fn authenticate(
    group: &[Arc<dyn Plugin>],
    req: &RequestHeader,
    ctx: &mut RequestCtx,
) -> Option<Stop> {
    let mut missing: Option<Stop> = None;
    let mut invalid: Option<Stop> = None;
    for plugin in group {
        let stop = |answer| Stop {
            answer,
            plugin: plugin.name(),
            phase: Phase::Authentication,
        };
        match plugin.authenticate(req, ctx).await {
            Auth::Authenticated(identity) => {
                ctx.identity = Some(identity);
                return None;
            }
            Auth::Missing(a) => {
                missing.get_or_insert_with(|| stop(a));
            }
            Auth::Invalid(a) => {
                invalid.get_or_insert_with(|| stop(a));
            }
        }
    }
    // Wrong credentials are always refused; only a caller who presented none is anonymous.
    if invalid.is_none() {
        if let Some(anon) = group.iter().find_map(|p| p.anonymous()) {
            ctx.identity = Some(Identity {
                consumer: anon.clone(),
                credential: None,
                anonymous: true,
            });
            return None;
        }
    }
    let stop = invalid.or(missing);
    if stop.is_some() {
        ctx.extensions.insert(AuthFailed);
    }
    stop
}

/// Set in the request's extensions when its authentication failed (a plugin such as
/// `auth_failure_limit` counts them).
#[derive(Debug, Clone, Copy)]
pub struct AuthFailed;
