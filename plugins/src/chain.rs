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

/// A chain of plugins sorted by phase, shared by every request that runs it.
pub type Plugins = Arc<[Arc<dyn Plugin>]>;

/// A route's compiled chains: the route's own (globals merged in) and, for each consumer
/// plugin set ([`crate::consumer::PluginSet`]), the route's chain with that set's plugins
/// merged in. Everything is merged when the config is compiled; a request only picks one.
pub struct RouteChain {
    /// The chain of the route.
    pub base: Plugins,
    /// The chain for consumers of each plugin set, indexed by
    /// [`Consumer::plugin_set`](crate::Consumer::plugin_set). Empty when the route has no
    /// authentication plugin or no consumer has plugins.
    pub per_consumer: Box<[Plugins]>,
}

/// What the request phase decided, and which chain the rest of the request runs.
pub struct Ran {
    /// Why the request phase stopped early; `None`: go on to the upstream.
    pub stop: Option<Stop>,
    /// The authenticated consumer's chain, when it is not the route's.
    pub chain: Option<Plugins>,
}

/// Run the request hooks of a route's chains: the route's chain up to authentication, then
/// the authenticated consumer's chain when it has one.
pub async fn run_request(chain: &RouteChain, session: &mut Session, ctx: &mut RequestCtx) -> Ran {
    run_chains(
        &chain.base,
        &chain.per_consumer,
        Input::Session(session),
        ctx,
    )
    .await
}

/// Run the request hooks of one chain (sorted by phase) on `input`. `None` means: go on to the
/// upstream.
pub async fn run(
    chain: &[Arc<dyn Plugin>],
    input: Input<'_>,
    ctx: &mut RequestCtx,
) -> Option<Stop> {
    run_chains(chain, &[], input, ctx).await.stop
}

async fn run_chains(
    base: &[Arc<dyn Plugin>],
    per_consumer: &[Plugins],
    mut input: Input<'_>,
    ctx: &mut RequestCtx,
) -> Ran {
    let mut chain = base;
    let mut switched: Option<Plugins> = None;
    let mut i = 0;
    let stop = |stop| Ran {
        stop: Some(stop),
        chain: None,
    };
    while i < chain.len() {
        let plugin = &chain[i];
        if plugin.phase() == Phase::Authentication {
            let n = chain[i..]
                .iter()
                .take_while(|p| p.phase() == Phase::Authentication)
                .count();
            if let Some(s) = authenticate(&chain[i..i + n], input.head(), ctx).await {
                return stop(s);
            }
            i += n;
            // Consumer plugins come after authentication (the config refuses others), so the
            // consumer's chain shares everything before this point with the route's.
            let set = ctx.identity.as_ref().and_then(|id| id.consumer.plugin_set);
            if let Some(c) = set.and_then(|k| per_consumer.get(k)) {
                let c = switched.insert(c.clone());
                chain = c;
                i = chain
                    .iter()
                    .position(|p| p.phase() > Phase::Authentication)
                    .unwrap_or(chain.len());
            }
            continue;
        }
        if let Flow::Respond(answer) = input.request(plugin, ctx).await {
            return Ran {
                stop: Some(Stop {
                    answer,
                    plugin: plugin.name(),
                    phase: plugin.phase(),
                }),
                chain: switched,
            };
        }
        i += 1;
    }
    Ran {
        stop: None,
        chain: switched,
    }
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
