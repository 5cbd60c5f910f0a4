//! Name resolution for everything that leaves this node (origins, peers by name, passthrough) and for DNS
//! forwarding: always through `dns.upstreams`, never through the system resolver while this node serves
//! DNS (with the DNS front off, `dns.upstreams = []` means /etc/resolv.conf: a container in a cluster). A cache node whose own
//! /etc/resolv.conf points at its interceptor would otherwise resolve an intercepted origin to itself and
//! fill from itself forever. For the cache's own lookups /etc/hosts is honoured first, so `localhost` and
//! pinned names work; the forwarder never reads it: partition clients get what the upstreams say, not the
//! node's private entries (Debian's `127.0.1.1 <hostname>`, pinned internal names).

use crate::config::DnsConfig;
use hickory_proto::op::ResponseCode;
use hickory_proto::rr::{Name, RecordType};
use hickory_resolver::config::{
    ConnectionConfig, NameServerConfig, ResolveHosts, ResolverConfig, ResolverOpts,
};
use hickory_resolver::lookup::Lookup;
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::net::{DnsError, NetError};
use hickory_resolver::{Resolver, TokioResolver};
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

const RESOLV_CONF: &str = "/etc/resolv.conf";

/// Per-query timeout towards the upstream resolvers: a client (5 s by default) gets SERVFAIL before it gives up.
const QUERY_TIMEOUT: Duration = Duration::from_secs(2);
/// Answers kept in the shared cache (forwarded DNS answers and our own lookups alike).
const CACHE_ENTRIES: u64 = 8192;

#[derive(Debug, thiserror::Error)]
pub enum ResolveError {
    #[error("cannot resolve {host}: {message}")]
    Lookup { host: String, message: String },
    #[error("{host} has no address")]
    NoAddress { host: String },
    #[error("resolver task failed: {0}")]
    Task(String),
}

/// Cheap to clone. Lookups run on the runtime the resolver was built on, whoever awaits them (awc's
/// threads included), so its connections and cache live in one place.
///
/// hickory's pool moves on to the next upstream when one times out or cannot be reached, but hands back the
/// first REFUSED, SERVFAIL or NOTIMP it gets. Those say "not from me" (an upstream that does not recurse
/// for us, a rate limit, a broken validator), so `each` holds a single-upstream resolver per configured
/// upstream, asked in order once the pool has been declined (glibc's and dnsmasq's behaviour).
#[derive(Clone)]
pub struct NameResolver {
    resolver: Arc<TokioResolver>,
    each: Arc<[Arc<TokioResolver>]>,
    runtime: tokio::runtime::Handle,
}

impl NameResolver {
    /// For the cache's own outbound names (/etc/hosts first). Must be called inside the main tokio runtime.
    pub fn new(dns: &DnsConfig) -> Result<Self, String> {
        Self::build(dns, ResolveHosts::Always)
    }

    /// For answering clients' forwarded queries: the upstreams only, never this node's hosts file.
    pub fn for_forwarding(dns: &DnsConfig) -> Result<Self, String> {
        Self::build(dns, ResolveHosts::Never)
    }

    fn build(dns: &DnsConfig, hosts: ResolveHosts) -> Result<Self, String> {
        if dns.upstreams.is_empty() {
            return Self::system(hosts);
        }
        let resolver = Arc::new(build_resolver(&dns.upstreams, hosts)?);
        let each = if dns.upstreams.len() > 1 {
            dns.upstreams
                .iter()
                .map(|upstream| build_resolver(std::slice::from_ref(upstream), hosts).map(Arc::new))
                .collect::<Result<_, _>>()?
        } else {
            Vec::new()
        };
        Ok(NameResolver {
            resolver,
            each: each.into(),
            runtime: tokio::runtime::Handle::current(),
        })
    }

    /// `dns.upstreams = []` (allowed only without the DNS front, so the system resolver cannot be this
    /// node's interceptor): the nameservers, search list and `ndots` of /etc/resolv.conf — a container's
    /// cluster DNS, whose address the image cannot know in advance.
    fn system(hosts: ResolveHosts) -> Result<Self, String> {
        let text = resolv_conf_or_local(std::fs::read(RESOLV_CONF))
            .map_err(|e| format!("dns.upstreams is empty and {RESOLV_CONF} is unreadable: {e}"))?;
        let (config, mut opts) = hickory_resolver::system_conf::parse_resolv_conf(text)
            .map_err(|e| format!("dns.upstreams is empty and {RESOLV_CONF} is unusable: {e}"))?;
        opts.timeout = QUERY_TIMEOUT;
        opts.cache_size = CACHE_ENTRIES;
        opts.use_hosts_file = hosts;
        opts.try_tcp_on_error = true;
        let mut builder = Resolver::builder_with_config(config, TokioRuntimeProvider::default());
        *builder.options_mut() = opts;
        let resolver = builder.build().map_err(|e| e.to_string())?;
        Ok(NameResolver {
            resolver: Arc::new(resolver),
            each: Vec::new().into(),
            runtime: tokio::runtime::Handle::current(),
        })
    }

    /// Records of one type, for the DNS front's forwarding.
    pub async fn lookup(&self, name: Name, record_type: RecordType) -> Result<Lookup, NetError> {
        first_accepted(&self.resolver, &self.each, |r| {
            let name = name.clone();
            async move { r.lookup(name, record_type).await }
        })
        .await
    }

    /// Addresses of `host` (an IP literal is returned as is, without a query).
    pub async fn lookup_ip(&self, host: &str) -> Result<Vec<IpAddr>, ResolveError> {
        let bare = host.trim_start_matches('[').trim_end_matches(']');
        if let Ok(ip) = bare.parse::<IpAddr>() {
            return Ok(vec![ip]);
        }
        let resolver = Arc::clone(&self.resolver);
        let each = Arc::clone(&self.each);
        let name = host.to_string();
        let lookup = self
            .runtime
            .spawn(async move {
                first_accepted(&resolver, &each, |r| {
                    let name = name.clone();
                    async move { r.lookup_ip(name.as_str()).await }
                })
                .await
            })
            .await
            .map_err(|e| ResolveError::Task(e.to_string()))?
            .map_err(|e| ResolveError::Lookup {
                host: host.to_string(),
                message: e.to_string(),
            })?;
        let ips: Vec<IpAddr> = lookup.iter().collect();
        if ips.is_empty() {
            return Err(ResolveError::NoAddress {
                host: host.to_string(),
            });
        }
        Ok(ips)
    }
    pub async fn lookup_socket_addrs(
        &self,
        host: &str,
        port: u16,
    ) -> Result<Vec<SocketAddr>, ResolveError> {
        Ok(self
            .lookup_ip(host)
            .await?
            .into_iter()
            .map(|ip| SocketAddr::new(ip, port))
            .collect())
    }
}

/// /etc/resolv.conf as glibc reads it (resolv.conf(5)): a missing file, or one without a `nameserver`
/// line, means the name server on this machine. A build sandbox or a minimal container has no such file,
/// and names from /etc/hosts (`localhost`) must resolve there as they do for every other program.
fn resolv_conf_or_local(read: std::io::Result<Vec<u8>>) -> std::io::Result<Vec<u8>> {
    let mut text = match read {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(e) => return Err(e),
    };
    let names_a_server = text
        .split(|b| *b == b'\n')
        .any(|line| line.split(u8::is_ascii_whitespace).next() == Some(b"nameserver".as_slice()));
    if !names_a_server {
        text.extend_from_slice(b"\nnameserver 127.0.0.1\n");
    }
    Ok(text)
}

fn build_resolver(upstreams: &[SocketAddr], hosts: ResolveHosts) -> Result<TokioResolver, String> {
    let servers = upstreams.iter().map(|addr| name_server(*addr)).collect();
    let config = ResolverConfig::from_parts(None, vec![], servers);
    let mut builder = Resolver::builder_with_config(config, TokioRuntimeProvider::default());
    let opts: &mut ResolverOpts = builder.options_mut();
    opts.timeout = QUERY_TIMEOUT;
    opts.attempts = 1;
    opts.edns0 = true;
    opts.cache_size = CACHE_ENTRIES;
    opts.use_hosts_file = hosts;
    opts.ndots = 0;
    opts.recursion_desired = true;
    opts.preserve_intermediates = true;
    opts.try_tcp_on_error = true;
    builder.build().map_err(|e| e.to_string())
}

/// The pool's answer, or when the pool was declined, the first upstream's (in configured order) that
/// does not decline too; the last refusal when every upstream declines.
async fn first_accepted<T, F, Fut>(
    pool: &Arc<TokioResolver>,
    each: &[Arc<TokioResolver>],
    ask: F,
) -> Result<T, NetError>
where
    F: Fn(Arc<TokioResolver>) -> Fut,
    Fut: Future<Output = Result<T, NetError>>,
{
    let mut outcome = ask(Arc::clone(pool)).await;
    for upstream in each {
        match &outcome {
            Err(e) if declined(e) => outcome = ask(Arc::clone(upstream)).await,
            _ => break,
        }
    }
    outcome
}

/// An upstream's "not from me": worth asking the next one, never worth relaying to a client.
fn declined(e: &NetError) -> bool {
    matches!(
        e,
        NetError::Dns(DnsError::ResponseCode(
            ResponseCode::Refused | ResponseCode::ServFail | ResponseCode::NotImp
        ))
    )
}

fn name_server(addr: SocketAddr) -> NameServerConfig {
    let mut udp = ConnectionConfig::udp();
    udp.port = addr.port();
    let mut tcp = ConnectionConfig::tcp();
    tcp.port = addr.port();
    NameServerConfig::new(addr.ip(), true, vec![udp, tcp])
}

/// awc's hook: its connector asks this for the addresses of an origin. With a `rule` (the clients of
/// guarded requests) an answer with any address the rule refuses is refused, so the connector has nothing
/// to dial: the check is on the very addresses the connection is made to.
pub struct AwcResolve {
    pub resolver: NameResolver,
    pub rule: Option<Arc<super::guard::AddressRule>>,
}

impl actix_tls::connect::Resolve for AwcResolve {
    fn lookup<'a>(
        &'a self,
        host: &'a str,
        port: u16,
    ) -> futures_util::future::LocalBoxFuture<'a, Result<Vec<SocketAddr>, Box<dyn std::error::Error>>>
    {
        Box::pin(async move {
            let addrs = self
                .resolver
                .lookup_socket_addrs(host, port)
                .await
                .map_err(|e| Box::new(e) as Box<dyn std::error::Error>)?;
            if let Some(rule) = &self.rule {
                super::guard::addresses(host, &addrs, rule).map_err(|why| {
                    tracing::warn!(%host, %why, "refused to dial a client-named host");
                    Box::<dyn std::error::Error>::from(why)
                })?;
            }
            Ok(addrs)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Error, ErrorKind};

    #[test]
    fn resolv_conf_falls_back_to_the_local_name_server_as_glibc_does() {
        let local = "\nnameserver 127.0.0.1\n";
        let table: Vec<(std::io::Result<Vec<u8>>, Option<String>)> = vec![
            // No file at all (a Nix build sandbox, a distroless container): this machine's server.
            (Err(ErrorKind::NotFound.into()), Some(local.into())),
            // A file without a server line: the same.
            (
                Ok(b"search example.org\n".to_vec()),
                Some(format!("search example.org\n{local}")),
            ),
            (
                Ok(b"# nameserver 10.0.0.1\n".to_vec()),
                Some(format!("# nameserver 10.0.0.1\n{local}")),
            ),
            // A file that names servers is taken as it is.
            (
                Ok(b"nameserver 10.0.0.1\n".to_vec()),
                Some("nameserver 10.0.0.1\n".into()),
            ),
            (
                Ok(b"nameserver\t10.0.0.2".to_vec()),
                Some("nameserver\t10.0.0.2".into()),
            ),
            // A file that exists but cannot be read is an error, not a silent fallback.
            (Err(Error::from(ErrorKind::PermissionDenied)), None),
        ];
        for (read, want) in table {
            let got = resolv_conf_or_local(read)
                .ok()
                .map(|b| String::from_utf8_lossy(&b).into_owned());
            assert_eq!(got, want);
        }
        let (config, _) = hickory_resolver::system_conf::parse_resolv_conf(
            resolv_conf_or_local(Err(ErrorKind::NotFound.into())).unwrap_or_default(),
        )
        .expect("the fallback parses");
        let servers: Vec<IpAddr> = config.name_servers.iter().map(|s| s.ip).collect();
        assert_eq!(servers, vec![IpAddr::from([127, 0, 0, 1])]);
    }
}
