//! Answers the gateway makes itself (errors, plugin answers, fresh hits of the cache's fast
//! path): the response hooks of the matched route run on their header first, as on an
//! upstream response, then its response-body hooks on the whole body (one last chunk).

use super::ctx::plugins;
use super::error::GatewayError;
use super::forwarding::REQUEST_ID;
use super::response_body;
use super::{Ctx, Gateway};
use bytes::Bytes;
use http::header;
use pingora::http::ResponseHeader;
use pingora::proxy::Session;
use pingora::Result;
use tollgate_plugins::cache::storage::FreshCopy;
use tollgate_plugins::cache::CachePolicy;
use tollgate_plugins::Answer;

impl Gateway {
    /// Send `answer` (status, headers, body; `Content-Length` added).
    pub(super) async fn send_answer(
        &self,
        session: &mut Session,
        ctx: &mut Ctx,
        answer: Answer,
    ) -> Result<()> {
        let mut resp = ResponseHeader::build(answer.status, Some(answer.headers.len() + 2))?;
        for (n, v) in answer.headers {
            resp.append_header(n, v)?;
        }
        resp.insert_header(header::CONTENT_LENGTH, answer.body.len())?;
        // Every response of a cached route says what the cache did, errors included.
        if let Some(policy) = ctx.cache_policy().cloned() {
            let urls = super::cache::set_status(
                session,
                &mut resp,
                ctx.cache_use,
                false,
                &policy,
                &ctx.req.route,
            );
            super::cache::invalidate(&policy, urls).await;
        }
        self.finish_header(&mut resp, ctx);
        self.close_if_draining(session);
        let body = self.whole_body_hooks(session, ctx, &mut resp, answer.body);
        let head = session.req_header().method == http::Method::HEAD;
        let no_body = head || body.is_empty();
        session
            .write_response_header(Box::new(resp), no_body)
            .await?;
        if !no_body {
            session.write_response_body(Some(body), true).await?;
        }
        Ok(())
    }

    /// Answer with `error` (when the client can still be answered); records its code. The
    /// return value is `request_filter`'s "responded".
    pub(super) async fn answer_error(
        &self,
        session: &mut Session,
        ctx: &mut Ctx,
        error: GatewayError,
    ) -> Result<bool> {
        ctx.error_code = Some(error.code());
        if let Some(answer) = error.answer() {
            self.send_answer(session, ctx, answer).await?;
        }
        Ok(true)
    }

    /// Headers every response gets: the route's response hooks, then the request id.
    pub(super) fn finish_header(&self, resp: &mut ResponseHeader, ctx: &mut Ctx) {
        let mut request_id = true;
        if let Some(route) = &ctx.route {
            for p in plugins(route, &ctx.consumer_chain) {
                p.response(resp, &mut ctx.req);
            }
            request_id = route.request_id;
        }
        if let Some(v) = ctx.request_id_value().filter(|_| request_id) {
            let _ = resp.insert_header(REQUEST_ID, v);
        }
    }

    /// The route's response-body hooks on a body that is whole in memory (answers, fresh
    /// hits), after the header hooks ran on `resp`; `Content-Length` then gives the length of
    /// what they returned. Responses without a body (HEAD, 204, 304) are left alone.
    fn whole_body_hooks(
        &self,
        session: &Session,
        ctx: &mut Ctx,
        resp: &mut ResponseHeader,
        body: Bytes,
    ) -> Bytes {
        match &ctx.route {
            Some(route)
                if route.response_body_hooks
                    && response_body::has_body(session.req_header(), resp) =>
            {
                response_body::run_whole(
                    plugins(route, &ctx.consumer_chain),
                    resp,
                    body,
                    &mut ctx.req,
                )
            }
            _ => body,
        }
    }

    /// While draining, every response closes its connection, so keep-alive clients
    /// reconnect (to the new process, during an upgrade) instead of being cut off later.
    pub(super) fn close_if_draining(&self, session: &mut Session) {
        if self.lifecycle.is_draining() {
            session.set_keepalive(None);
        }
    }
}

impl Gateway {
    /// Answer from a fresh stored copy without Pingora's cache phases (the fast path of
    /// [`CachePolicy::fresh_hit`]): the stored head with `Age` and the status headers, the
    /// route's response hooks, then the stored body.
    pub(super) async fn serve_fresh(
        &self,
        session: &mut Session,
        ctx: &mut Ctx,
        copy: &FreshCopy,
        policy: &CachePolicy,
    ) -> pingora::Result<()> {
        let mut resp = copy.header.clone();
        resp.set_version(http::Version::HTTP_11);
        let status = resp.status.as_u16();
        if !matches!(status, 204 | 304) && !resp.headers.contains_key(header::CONTENT_LENGTH) {
            resp.insert_header(header::CONTENT_LENGTH, copy.body.len())?;
        }
        let age = std::time::SystemTime::now()
            .duration_since(copy.epoch)
            .map_or(0, |d| d.as_secs());
        resp.insert_header(header::AGE, age)?;
        // The stored copy already says HIT.
        super::cache::count(policy, &ctx.req.route, "hit");
        self.finish_header(&mut resp, ctx);
        if !session.is_http2() {
            match &copy.date {
                Some(date) => {
                    let stored = copy.header.headers.get(header::DATE);
                    self.origin_date.carry(&mut resp, stored, date);
                }
                None => self.origin_date.mark(&mut resp),
            }
        }
        self.close_if_draining(session);
        let body = self.whole_body_hooks(session, ctx, &mut resp, copy.body.clone());
        let no_body = session.req_header().method == http::Method::HEAD || body.is_empty();
        session
            .write_response_header(Box::new(resp), no_body)
            .await?;
        if !no_body {
            session.write_response_body(Some(body), true).await?;
        }
        Ok(())
    }
}
