//! Resolving a portal group's `listen` values to socket addresses.
//!
//! Forms accepted, as ctld and vSAN write them: `ADDR:PORT`, `[V6ADDR]:PORT`, a bare address (port
//! 3260), and `IFNAME:PORT` (vSAN's `vmk0:3260`), which stands for every address of that interface;
//! failing those, `HOST:PORT` with a host name the system resolver knows (as ctld, which passes
//! the value to getaddrinfo): every address it gives.

use std::ffi::CStr;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV6};

/// The iSCSI well-known port.
pub const ISCSI_PORT: u16 = 3260;

/// An address of a network interface.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InterfaceAddr {
    pub name: String,
    pub addr: IpAddr,
    pub scope_id: u32,
}

/// Marks what a connection sends with its portal group's ctl.conf `dscp` (the DiffServ
/// codepoint, in IP_TOS or, over IPv6, IPV6_TCLASS) and `pcp` (the 802.1Q priority, through
/// SO_PRIORITY, which a VLAN interface's egress map turns into the frame's PCP), as ctld does.
/// Written by hand: std has no setter for these, and the socket crate is a dev-dependency only.
pub fn mark_traffic(
    s: &std::net::TcpStream,
    dscp: Option<u8>,
    pcp: Option<u8>,
) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    let set = |level: libc::c_int, name: libc::c_int, value: libc::c_int| {
        // SAFETY: setsockopt on a socket this stream owns, with a c_int value of its size.
        let rc = unsafe {
            libc::setsockopt(
                s.as_raw_fd(),
                level,
                name,
                (&value as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        if rc == 0 {
            Ok(())
        } else {
            Err(std::io::Error::last_os_error())
        }
    };
    if let Some(d) = dscp {
        let tos = libc::c_int::from(d) << 2;
        match s.local_addr()? {
            SocketAddr::V4(_) => set(libc::IPPROTO_IP, libc::IP_TOS, tos)?,
            SocketAddr::V6(_) => set(libc::IPPROTO_IPV6, libc::IPV6_TCLASS, tos)?,
        }
    }
    if let Some(p) = pcp {
        set(libc::SOL_SOCKET, libc::SO_PRIORITY, libc::c_int::from(p))?;
    }
    Ok(())
}

/// The addresses of this machine's interfaces (getifaddrs(3)).
pub fn interface_addrs() -> std::io::Result<Vec<InterfaceAddr>> {
    let mut head: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs writes a pointer to a list it allocates into `head`; we free it below.
    if unsafe { libc::getifaddrs(&mut head) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    let mut out = Vec::new();
    let mut cur = head;
    while !cur.is_null() {
        // SAFETY: `cur` is a non-null node of the list getifaddrs returned, valid until freeifaddrs.
        let ifa = unsafe { &*cur };
        cur = ifa.ifa_next;
        if ifa.ifa_addr.is_null() || ifa.ifa_name.is_null() {
            continue;
        }
        // SAFETY: ifa_name is a NUL-terminated string owned by the list.
        let name = unsafe { CStr::from_ptr(ifa.ifa_name) }
            .to_string_lossy()
            .into_owned();
        // SAFETY: ifa_addr is non-null and points to a sockaddr whose family field is readable.
        let family = i32::from(unsafe { (*ifa.ifa_addr).sa_family });
        let (addr, scope_id) = match family {
            libc::AF_INET => {
                // SAFETY: the family says this sockaddr is a sockaddr_in.
                let sin = unsafe { &*(ifa.ifa_addr as *const libc::sockaddr_in) };
                (
                    IpAddr::V4(Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr))),
                    0,
                )
            }
            libc::AF_INET6 => {
                // SAFETY: the family says this sockaddr is a sockaddr_in6.
                let sin6 = unsafe { &*(ifa.ifa_addr as *const libc::sockaddr_in6) };
                (
                    IpAddr::V6(Ipv6Addr::from(sin6.sin6_addr.s6_addr)),
                    sin6.sin6_scope_id,
                )
            }
            _ => continue,
        };
        out.push(InterfaceAddr {
            name,
            addr,
            scope_id,
        });
    }
    // SAFETY: `head` came from a successful getifaddrs and is freed exactly once.
    unsafe { libc::freeifaddrs(head) };
    Ok(out)
}

/// Resolves one `listen` value. `interfaces` is the machine's interface table (passed in so that
/// tests can use their own); a host name that is no interface goes to the system's resolver.
pub fn resolve_listen(
    listen: &str,
    interfaces: &[InterfaceAddr],
) -> Result<Vec<SocketAddr>, String> {
    resolve_listen_with(listen, interfaces, &|host, port| {
        std::net::ToSocketAddrs::to_socket_addrs(&(host, port)).map(Iterator::collect)
    })
}

/// Resolves one `listen` value as [`resolve_listen`] does, but with the interface table and
/// literal addresses only: `Ok(None)` for a host name that only the system resolver (DNS) could
/// resolve, which is not asked. For a view of this host that asks no name server (vitctl's).
pub fn resolve_listen_locally(
    listen: &str,
    interfaces: &[InterfaceAddr],
) -> Result<Option<Vec<SocketAddr>>, String> {
    let asked = std::cell::Cell::new(false);
    let resolved = resolve_listen_with(listen, interfaces, &|_, _| {
        asked.set(true);
        Ok(Vec::new())
    });
    if asked.get() {
        return Ok(None);
    }
    resolved.map(Some)
}

/// Whether a listener on `wildcard` takes the connections to `addr` too: the unspecified
/// address of its family on the same port (`[::]` is listened on with IPV6_V6ONLY). Linux
/// refuses to listen on both (EADDRINUSE, even with SO_REUSEADDR).
pub fn covers(wildcard: &SocketAddr, addr: &SocketAddr) -> bool {
    wildcard.ip().is_unspecified()
        && wildcard != addr
        && wildcard.port() == addr.port()
        && wildcard.is_ipv4() == addr.is_ipv4()
}

/// vitd's start check of its portal groups' addresses. `listened` holds each address vitd
/// would listen on with the portal group it is of, in the order vitd takes them; the first
/// address that cannot be listened on beside an earlier one of another group is returned with
/// that earlier one, as indices into `listened`: the same address (vitd would listen there for
/// one group alone, and the other's targets, which discovery advertises there, could not be
/// logged in to), or a wildcard and an address of its family on one port (Linux lets only one
/// of the two listen). The two are equal addresses in the first case, not in the second.
pub fn first_clash<G: PartialEq>(listened: &[(SocketAddr, G)]) -> Option<(usize, usize)> {
    listened.iter().enumerate().find_map(|(i, (a, g))| {
        listened[..i]
            .iter()
            .position(|(b, h)| h != g && (b == a || covers(b, a) || covers(a, b)))
            .map(|j| (i, j))
    })
}

/// A host name and port to the addresses a resolver gives for them.
type HostLookup<'a> = &'a dyn Fn(&str, u16) -> std::io::Result<Vec<SocketAddr>>;

fn resolve_listen_with(
    listen: &str,
    interfaces: &[InterfaceAddr],
    lookup: HostLookup<'_>,
) -> Result<Vec<SocketAddr>, String> {
    let listen = listen.trim();
    if let Ok(sa) = listen.parse::<SocketAddr>() {
        return scoped(sa, listen, interfaces).map(|sa| vec![sa]);
    }
    if let Ok(ip) = listen.parse::<IpAddr>() {
        return scoped(SocketAddr::new(ip, ISCSI_PORT), listen, interfaces).map(|sa| vec![sa]);
    }
    if let Some(v6) = listen.strip_prefix('[').and_then(|s| s.strip_suffix(']')) {
        let ip: Ipv6Addr = v6
            .parse()
            .map_err(|_| format!("{listen:?}: not an IPv6 address"))?;
        let sa = SocketAddr::new(IpAddr::V6(ip), ISCSI_PORT);
        return scoped(sa, listen, interfaces).map(|sa| vec![sa]);
    }
    let (host, port) = match listen.rsplit_once(':') {
        Some((h, p)) => {
            let port = p.parse::<u16>().ok().filter(|p| *p != 0);
            (
                h,
                port.ok_or_else(|| format!("{listen:?}: port {p:?} is not 1..65535"))?,
            )
        }
        None => (listen, ISCSI_PORT),
    };
    if host.is_empty() {
        return Err(format!("{listen:?}: no address or interface"));
    }
    let addrs: Vec<SocketAddr> = interfaces
        .iter()
        .filter(|i| i.name == host)
        .map(|i| match i.addr {
            IpAddr::V6(v6) => SocketAddr::V6(SocketAddrV6::new(v6, port, 0, i.scope_id)),
            v4 => SocketAddr::new(v4, port),
        })
        .collect();
    if !addrs.is_empty() {
        return Ok(addrs);
    }
    if interfaces.iter().all(|i| i.name != host) && host == "localhost" {
        return Ok(vec![SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port)]);
    }
    if interfaces.iter().any(|i| i.name == host) {
        return Err(format!("{listen:?}: interface {host:?} has no address"));
    }
    let found = match lookup(host, port) {
        Ok(found) if !found.is_empty() => found,
        Ok(_) => {
            return Err(format!(
                "{listen:?}: {host:?} is neither an address, nor an interface with an address, \
                 nor a host name with an address"
            ));
        }
        Err(e) => {
            return Err(format!(
                "{listen:?}: {host:?} is neither an address nor an interface with an address, \
                 and as a host name: {e}"
            ));
        }
    };
    let mut addrs: Vec<SocketAddr> = Vec::with_capacity(found.len());
    for sa in found {
        let sa = scoped(sa, listen, interfaces)?;
        if !addrs.contains(&sa) {
            addrs.push(sa);
        }
    }
    Ok(addrs)
}

/// A link-local IPv6 address means nothing without its interface (bind(2) refuses it with
/// EINVAL): it gets the scope id of the one interface that has it. An IPv4-mapped address
/// becomes the IPv4 address.
fn scoped(
    sa: SocketAddr,
    listen: &str,
    interfaces: &[InterfaceAddr],
) -> Result<SocketAddr, String> {
    let SocketAddr::V6(v6) = sa else {
        return Ok(sa);
    };
    // An IPv4-mapped address is its IPv4 address: vitd listens on IPv6 with IPV6_V6ONLY, where
    // bind(2) refuses a mapped one (EINVAL).
    if let Some(v4) = v6.ip().to_ipv4_mapped() {
        return Ok(SocketAddr::new(IpAddr::V4(v4), v6.port()));
    }
    if !v6.ip().is_unicast_link_local() || v6.scope_id() != 0 {
        return Ok(sa);
    }
    let mut owners = interfaces
        .iter()
        .filter(|i| i.addr == IpAddr::V6(*v6.ip()) && i.scope_id != 0);
    match (owners.next(), owners.next()) {
        (Some(i), None) => Ok(SocketAddr::V6(SocketAddrV6::new(
            *v6.ip(),
            v6.port(),
            0,
            i.scope_id,
        ))),
        (None, _) => Err(format!(
            "{listen:?}: link-local address {} is on no interface of this host",
            v6.ip()
        )),
        (Some(_), Some(_)) => Err(format!(
            "{listen:?}: link-local address {} is on several interfaces; listen on \
             IFNAME:PORT instead",
            v6.ip()
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A connection of a portal group with `dscp` and `pcp` sends with them: IP_TOS (or, over
    /// IPv6, IPV6_TCLASS) holds the codepoint shifted past the ECN bits, SO_PRIORITY the
    /// priority. vitd took both from vit.conf and never applied them.
    #[test]
    fn connections_are_marked_with_their_groups_dscp_and_pcp() {
        use std::os::fd::AsRawFd;
        let get = |s: &std::net::TcpStream, level: libc::c_int, name: libc::c_int| {
            let mut v: libc::c_int = -1;
            let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
            // SAFETY: getsockopt into a c_int of the length given, on a socket the test owns.
            let rc = unsafe {
                libc::getsockopt(
                    s.as_raw_fd(),
                    level,
                    name,
                    (&mut v as *mut libc::c_int).cast(),
                    &mut len,
                )
            };
            assert_eq!(rc, 0);
            v
        };
        for (addr, level, name) in [
            ("127.0.0.1:0", libc::IPPROTO_IP, libc::IP_TOS),
            ("[::1]:0", libc::IPPROTO_IPV6, libc::IPV6_TCLASS),
        ] {
            let Ok(l) = std::net::TcpListener::bind(addr) else {
                continue; // no IPv6 here
            };
            let _client = std::net::TcpStream::connect(l.local_addr().unwrap()).unwrap();
            let (s, _) = l.accept().unwrap();
            mark_traffic(&s, None, None).unwrap();
            assert_eq!(get(&s, level, name) & !3, 0, "{addr}: marked unasked");
            mark_traffic(&s, Some(46), Some(5)).unwrap();
            assert_eq!(get(&s, level, name), 46 << 2, "{addr}");
            assert_eq!(get(&s, libc::SOL_SOCKET, libc::SO_PRIORITY), 5, "{addr}");
        }
    }

    fn ifs() -> Vec<InterfaceAddr> {
        vec![
            InterfaceAddr {
                name: "lo".into(),
                addr: "127.0.0.1".parse().unwrap(),
                scope_id: 0,
            },
            InterfaceAddr {
                name: "vmk0".into(),
                addr: "10.0.0.5".parse().unwrap(),
                scope_id: 0,
            },
            InterfaceAddr {
                name: "vmk0".into(),
                addr: "fe80::1".parse().unwrap(),
                scope_id: 3,
            },
        ]
    }

    #[test]
    fn addresses_and_ports() {
        let r = |s| resolve_listen(s, &ifs());
        assert_eq!(
            r("127.0.0.1:3261").unwrap(),
            vec!["127.0.0.1:3261".parse().unwrap()]
        );
        assert_eq!(r("0.0.0.0").unwrap(), vec!["0.0.0.0:3260".parse().unwrap()]);
        assert_eq!(r("[::]:3260").unwrap(), vec!["[::]:3260".parse().unwrap()]);
        assert_eq!(r("[::1]").unwrap(), vec!["[::1]:3260".parse().unwrap()]);
        assert_eq!(r("::").unwrap(), vec!["[::]:3260".parse().unwrap()]);
    }

    #[test]
    fn interface_names_expand_to_every_address() {
        let got = resolve_listen("vmk0:3260", &ifs()).unwrap();
        assert_eq!(got.len(), 2);
        assert_eq!(got[0], "10.0.0.5:3260".parse().unwrap());
        match got[1] {
            SocketAddr::V6(v6) => assert_eq!(v6.scope_id(), 3),
            other => panic!("expected v6, got {other}"),
        }
    }

    #[test]
    fn a_link_local_address_gets_its_interfaces_scope() {
        let r = |s| resolve_listen(s, &ifs());
        for value in ["[fe80::1]:3261", "[fe80::1]", "fe80::1"] {
            match r(value).unwrap()[..] {
                [SocketAddr::V6(v6)] => {
                    assert_eq!((*v6.ip(), v6.scope_id()), ("fe80::1".parse().unwrap(), 3))
                }
                ref other => panic!("{value}: {other:?}"),
            }
        }
        assert!(r("[fe80::2]:3260").unwrap_err().contains("on no interface"));
        let mut two = ifs();
        two.push(InterfaceAddr {
            name: "vmk1".into(),
            addr: "fe80::1".parse().unwrap(),
            scope_id: 4,
        });
        assert!(
            resolve_listen("[fe80::1]:3260", &two)
                .unwrap_err()
                .contains("several interfaces")
        );
        // Other IPv6 addresses are taken as written.
        assert_eq!(
            r("[fd00::1]").unwrap(),
            vec!["[fd00::1]:3260".parse().unwrap()]
        );
    }

    #[test]
    fn an_ipv4_mapped_address_is_listened_on_as_ipv4() {
        // [::] is bound with IPV6_V6ONLY, where bind(2) refuses a mapped address.
        for value in ["[::ffff:127.0.0.1]:3261", "::ffff:127.0.0.1"] {
            let got = resolve_listen(value, &ifs()).unwrap();
            assert_eq!(got.len(), 1);
            assert_eq!(got[0].ip(), IpAddr::V4(Ipv4Addr::LOCALHOST), "{value}");
        }
    }

    #[test]
    fn host_names_resolve_to_every_address_they_have() {
        let lookup = |host: &str, port: u16| -> std::io::Result<Vec<SocketAddr>> {
            match host {
                "storage1" => Ok(vec![
                    SocketAddr::new("10.0.0.7".parse().unwrap(), port),
                    SocketAddr::new("fe80::1".parse().unwrap(), port),
                    SocketAddr::new("10.0.0.7".parse().unwrap(), port),
                ]),
                "empty" => Ok(Vec::new()),
                _ => Err(std::io::Error::other("Name or service not known")),
            }
        };
        let got = resolve_listen_with("storage1:3262", &ifs(), &lookup).unwrap();
        assert_eq!(got[0], "10.0.0.7:3262".parse().unwrap());
        // A link-local address a name gives gets its interface's scope, as a literal one does.
        match got[1..] {
            [SocketAddr::V6(v6)] => assert_eq!((v6.port(), v6.scope_id()), (3262, 3)),
            ref other => panic!("{other:?}"),
        }
        assert_eq!(
            resolve_listen_with("storage1", &ifs(), &lookup).unwrap()[0].port(),
            ISCSI_PORT
        );
        // An interface name wins over the resolver; an unknown name says what the resolver said.
        let got = resolve_listen_with("vmk0:3260", &ifs(), &lookup).unwrap();
        assert_eq!(got[0], "10.0.0.5:3260".parse().unwrap());
        let err = resolve_listen_with("nosuch:3260", &ifs(), &lookup).unwrap_err();
        assert!(err.contains("Name or service not known"), "{err}");
        let err = resolve_listen_with("empty:3260", &ifs(), &lookup).unwrap_err();
        assert!(err.contains("nor a host name with an address"), "{err}");
    }

    #[test]
    fn the_system_resolver_is_asked_for_host_names() {
        // This machine's own name (no interface is given, so only the resolver can know it):
        // whatever the system resolver says of it, resolve_listen says too.
        let mut buf = [0u8; 256];
        // SAFETY: the buffer is writable for its whole length, which is what we pass.
        let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
        assert_eq!(rc, 0);
        let name = CStr::from_bytes_until_nul(&buf).unwrap().to_str().unwrap();
        let system: Vec<SocketAddr> = std::net::ToSocketAddrs::to_socket_addrs(&(name, 3263))
            .map(Iterator::collect)
            .unwrap_or_default();
        match resolve_listen(&format!("{name}:3263"), &[]) {
            Ok(got) => {
                assert!(!system.is_empty(), "{name}: {got:?}");
                assert!(got.iter().all(|a| system.contains(a)), "{got:?} {system:?}");
                assert!(system.iter().all(|a| got.contains(a)), "{got:?} {system:?}");
            }
            Err(e) => assert!(
                system.is_empty(),
                "{name}: {e}, the resolver said {system:?}"
            ),
        }
    }

    /// Without the resolver: literal addresses and interfaces resolve as they do for vitd, a
    /// name only DNS could know is left unresolved (no lookup is made), and bad values still
    /// say why.
    #[test]
    fn resolving_locally_asks_no_resolver() {
        let r = |s| resolve_listen_locally(s, &ifs());
        assert_eq!(
            r("lo:3261").unwrap().unwrap(),
            vec!["127.0.0.1:3261".parse().unwrap()]
        );
        assert_eq!(r("vmk0:3260").unwrap().unwrap().len(), 2);
        assert_eq!(
            r("[::ffff:127.0.0.1]:3260").unwrap().unwrap(),
            vec!["127.0.0.1:3260".parse().unwrap()]
        );
        assert_eq!(r("storage1:3260").unwrap(), None);
        assert!(r("lo:0").unwrap_err().contains("port"));
    }

    #[test]
    fn clashes_are_the_same_address_or_a_wildcard_and_its_family_on_one_port() {
        let a = |s: &str| s.parse::<SocketAddr>().unwrap();
        let clash =
            |l: &[(&str, u8)]| first_clash(&l.iter().map(|&(s, g)| (a(s), g)).collect::<Vec<_>>());
        assert_eq!(
            clash(&[("127.0.0.1:1", 0), ("127.0.0.1:1", 1)]),
            Some((1, 0))
        );
        assert_eq!(clash(&[("127.0.0.1:1", 0), ("0.0.0.0:1", 1)]), Some((1, 0)));
        assert_eq!(
            clash(&[("[::]:1", 0), ("10.0.0.1:1", 1), ("[::1]:1", 2)]),
            Some((2, 0))
        );
        // One group may name an address twice, or a wildcard and an address under it.
        assert_eq!(clash(&[("127.0.0.1:1", 0), ("127.0.0.1:1", 0)]), None);
        assert_eq!(clash(&[("127.0.0.1:1", 0), ("0.0.0.0:1", 0)]), None);
        // Other ports, other families, two wildcards of different families.
        assert_eq!(
            clash(&[
                ("127.0.0.1:1", 0),
                ("127.0.0.1:2", 1),
                ("[::]:1", 1),
                ("0.0.0.0:3", 0),
                ("[::]:3", 1)
            ]),
            None
        );
    }

    #[test]
    fn bad_values_say_why() {
        assert!(
            resolve_listen("vmk9:3260", &ifs())
                .unwrap_err()
                .contains("neither")
        );
        assert!(resolve_listen("lo:0", &ifs()).unwrap_err().contains("port"));
        assert!(
            resolve_listen("lo:70000", &ifs())
                .unwrap_err()
                .contains("port")
        );
        assert!(
            resolve_listen(":3260", &ifs())
                .unwrap_err()
                .contains("no address")
        );
        assert!(resolve_listen("[zz]", &ifs()).unwrap_err().contains("IPv6"));
    }

    #[test]
    fn this_machine_has_a_loopback_interface() {
        let all = interface_addrs().unwrap();
        assert!(
            all.iter()
                .any(|i| i.addr == IpAddr::V4(Ipv4Addr::LOCALHOST)),
            "{all:?}"
        );
    }
}
