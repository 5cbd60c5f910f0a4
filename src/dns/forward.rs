//! Everything that is not ours goes to `dns.upstreams` through hickory's resolver (shared answer cache,
//! TCP when an upstream truncates, EDNS). The answer keeps the upstream's rcode: NXDOMAIN stays NXDOMAIN,
//! NODATA stays NODATA, both with the SOA the upstream gave; only a failure to get any answer is SERVFAIL.
//! An upstream's REFUSED is never relayed: it would tell the client that *this* server refuses it. The
//! next upstream is asked instead (see `NameResolver`), and when every upstream declines the client gets
//! SERVFAIL, as from any recursive resolver that could not find an answer.

use super::policy;
use crate::upstream::NameResolver;
use hickory_proto::op::{Message, Query, ResponseCode};
use hickory_proto::rr::{RData, Record};
use std::time::Instant;

#[derive(Clone)]
pub(super) struct Forwarder {
    resolver: NameResolver,
}

impl Forwarder {
    pub(super) fn new(resolver: NameResolver) -> Self {
        Forwarder { resolver }
    }

    /// The response to `request` for its one `query`. `Err` carries a SERVFAIL response and the reason.
    pub(super) async fn answer(
        &self,
        request: &Message,
        query: &Query,
    ) -> Result<Message, (Message, String)> {
        let lookup = self
            .resolver
            .lookup(query.name().clone(), query.query_type())
            .await;
        match lookup {
            Ok(lookup) => {
                let left = lookup
                    .valid_until()
                    .saturating_duration_since(Instant::now())
                    .as_secs();
                let left = u32::try_from(left).unwrap_or(u32::MAX);
                let mut response = policy::response_to(request, ResponseCode::NoError);
                response.answers = lookup
                    .answers()
                    .iter()
                    .cloned()
                    .map(|mut r| {
                        r.ttl = r.ttl.min(left);
                        r
                    })
                    .collect();
                Ok(response)
            }
            Err(e) if e.is_no_records_found() => {
                let code = if e.is_nx_domain() {
                    ResponseCode::NXDomain
                } else {
                    ResponseCode::NoError
                };
                let mut response = policy::response_to(request, code);
                if let Some(soa) = e.into_soa() {
                    let soa = *soa;
                    response.authorities.push(Record::from_rdata(
                        soa.name,
                        soa.ttl,
                        RData::SOA(soa.data),
                    ));
                }
                Ok(response)
            }
            Err(e) => Err((
                policy::response_to(request, ResponseCode::ServFail),
                e.to_string(),
            )),
        }
    }
}
