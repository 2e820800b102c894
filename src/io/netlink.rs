//! Links, addresses and routes through rtnetlink: the bridge each network's TAP joins, the TAP's MTU and state, the
//! underlay address check, the gateway address on the bridge, and the veth pairs of `weft attach` (configured inside
//! the endpoint's namespace through a netlink socket opened there). No `ip` command is ever run.

use std::net::{IpAddr, Ipv4Addr};
use std::os::fd::AsRawFd;
use std::path::Path;

use futures::TryStreamExt;
use overlay_proto::MacAddr;
use rtnetlink::packet_route::address::AddressAttribute;
use rtnetlink::packet_route::address::AddressMessage;
use rtnetlink::packet_route::link::{LinkAttribute, LinkMessage};
use rtnetlink::packet_route::route::{RouteAttribute, RouteMessage};
use rtnetlink::{Handle, LinkBridge, LinkUnspec, LinkVeth, RouteMessageBuilder};

/// A netlink request failed: what weft was doing, and what the kernel said.
#[derive(Debug, thiserror::Error)]
#[error("{what}: {cause}")]
pub struct NetlinkError {
    what: String,
    cause: String,
}

fn fail(what: impl Into<String>) -> impl FnOnce(rtnetlink::Error) -> NetlinkError {
    let what = what.into();
    move |error| {
        let cause = match &error {
            rtnetlink::Error::NetlinkError(e) if e.raw_code() == -libc::EPERM || e.raw_code() == -libc::EACCES => {
                "operation not permitted: weft needs CAP_NET_ADMIN (run it as root, or grant the capability)".into()
            }
            rtnetlink::Error::NetlinkError(e) => std::io::Error::from_raw_os_error(-e.raw_code()).to_string(),
            other => other.to_string(),
        };
        NetlinkError { what, cause }
    }
}

/// What weft needs to know about a link.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link {
    /// Interface index.
    pub index: u32,
    /// Name.
    pub name: String,
    /// MTU.
    pub mtu: u32,
    /// `ifalias`, which marks bridges weft created.
    pub alias: Option<String>,
    /// The hardware address, for Ethernet-like links.
    pub mac: Option<MacAddr>,
    /// The index of the bridge (or bond) it is a port of.
    pub master: Option<u32>,
}

impl Link {
    fn from_message(msg: &LinkMessage) -> Self {
        let mut link =
            Link { index: msg.header.index, name: String::new(), mtu: 0, alias: None, mac: None, master: None };
        for attr in &msg.attributes {
            match attr {
                LinkAttribute::IfName(name) => link.name = name.clone(),
                LinkAttribute::Mtu(mtu) => link.mtu = *mtu,
                LinkAttribute::IfAlias(alias) => link.alias = Some(alias.clone()),
                LinkAttribute::Address(bytes) => link.mac = <[u8; 6]>::try_from(bytes.as_slice()).ok().map(MacAddr),
                LinkAttribute::Controller(index) => link.master = Some(*index),
                _ => {}
            }
        }
        link
    }
}

/// A netlink connection, driven by a task on the current tokio runtime.
#[derive(Debug, Clone)]
pub struct Netlink {
    handle: Handle,
}

impl Netlink {
    /// Opens the route netlink socket.
    pub fn connect() -> std::io::Result<Self> {
        let (connection, handle, _) = rtnetlink::new_connection()?;
        tokio::spawn(connection);
        Ok(Self { handle })
    }

    /// The rtnetlink handle, for requests this module does not wrap (the AF_XDP underlay's neighbour lookups).
    pub fn handle(&self) -> Handle {
        self.handle.clone()
    }

    /// The link called `name`, if there is one.
    pub async fn link_by_name(&self, name: &str) -> Result<Option<Link>, NetlinkError> {
        let mut links = self.handle.link().get().match_name(name.to_string()).execute();
        match links.try_next().await {
            Ok(Some(msg)) => Ok(Some(Link::from_message(&msg))),
            Ok(None) => Ok(None),
            Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -libc::ENODEV => Ok(None),
            Err(e) => Err(fail(format!("looking up link {name}"))(e)),
        }
    }

    /// The link with index `index`.
    pub async fn link_by_index(&self, index: u32) -> Result<Link, NetlinkError> {
        let mut links = self.handle.link().get().match_index(index).execute();
        let what = format!("looking up link #{index}");
        match links.try_next().await.map_err(fail(what.clone()))? {
            Some(msg) => Ok(Link::from_message(&msg)),
            None => Err(NetlinkError { what, cause: "no such link".into() }),
        }
    }

    /// The link that holds address `addr`, if any.
    pub async fn link_with_address(&self, addr: IpAddr) -> Result<Option<Link>, NetlinkError> {
        let mut addresses = self.handle.address().get().execute();
        while let Some(msg) = addresses.try_next().await.map_err(fail("listing addresses"))? {
            let holds = msg
                .attributes
                .iter()
                .any(|a| matches!(a, AddressAttribute::Address(a) | AddressAttribute::Local(a) if *a == addr));
            if holds {
                return self.link_by_index(msg.header.index).await.map(Some);
            }
        }
        Ok(None)
    }

    /// Creates bridge `name`, up, marked with `alias` so a later weft recognises it as its own.
    pub async fn create_bridge(&self, name: &str, alias: &str) -> Result<Link, NetlinkError> {
        let what = format!("creating bridge {name}");
        self.handle.link().add(LinkBridge::new(name).build()).execute().await.map_err(fail(what.clone()))?;
        let link = self
            .link_by_name(name)
            .await?
            .ok_or_else(|| NetlinkError { what: what.clone(), cause: "created but not found".into() })?;
        let message = LinkUnspec::new_with_index(link.index).alias(alias).build();
        self.handle.link().set(message).execute().await.map_err(fail(format!("marking bridge {name}")))?;
        Ok(link)
    }

    /// Sets `link`'s MTU, makes it a port of `bridge`, and brings both up.
    pub async fn attach_to_bridge(&self, link: u32, bridge: u32, mtu: u32) -> Result<(), NetlinkError> {
        let port = LinkUnspec::new_with_index(link).mtu(mtu).controller(bridge).up().build();
        self.handle
            .link()
            .set(port)
            .execute()
            .await
            .map_err(fail(format!("attaching link #{link} to bridge #{bridge}")))?;
        let up = LinkUnspec::new_with_index(bridge).up().build();
        self.handle.link().set(up).execute().await.map_err(fail(format!("bringing up bridge #{bridge}")))
    }

    /// Sets `link`'s MAC to the one it has now. A bridge whose MAC was never set takes the lowest MAC of its ports
    /// and changes it whenever a port comes or goes; its IPv6 link-local traffic then comes from ever new MACs,
    /// which the other hosts would learn as endpoints. A set MAC stays (the kernel marks it `NET_ADDR_SET`).
    /// A link without an Ethernet address is left as it is.
    pub async fn pin_address(&self, link: &Link) -> Result<(), NetlinkError> {
        let Some(mac) = link.mac else { return Ok(()) };
        let message = LinkUnspec::new_with_index(link.index).address(mac.0.to_vec()).build();
        self.handle.link().set(message).execute().await.map_err(fail(format!("pinning the MAC of {}", link.name)))
    }

    /// Deletes a link.
    pub async fn delete_link(&self, index: u32) -> Result<(), NetlinkError> {
        self.handle.link().del(index).execute().await.map_err(fail(format!("deleting link #{index}")))
    }

    /// A connection inside the network namespace at `path` (a `/run/netns/NAME` file), and the task that drives it
    /// (abort it when done). The socket is created by a short-lived thread that enters the namespace, so the
    /// daemon's own threads never change namespace.
    pub fn in_netns(path: &Path) -> std::io::Result<(Self, tokio::task::JoinHandle<()>)> {
        let target = std::fs::File::open(path)?;
        let runtime = tokio::runtime::Handle::current();
        let opened = std::thread::scope(|scope| {
            scope
                .spawn(|| {
                    let _context = runtime.enter();
                    super::netns::enter(&target)?;
                    rtnetlink::new_connection()
                })
                .join()
        });
        let (connection, handle, _) = opened.map_err(|_| std::io::Error::other("the namespace thread panicked"))??;
        Ok((Self { handle }, tokio::spawn(connection)))
    }

    /// Names of every link.
    pub async fn link_names(&self) -> Result<Vec<String>, NetlinkError> {
        let mut links = self.handle.link().get().execute();
        let mut names = Vec::new();
        while let Some(msg) = links.try_next().await.map_err(fail("listing links"))? {
            names.push(Link::from_message(&msg).name);
        }
        Ok(names)
    }

    /// Creates the veth pair `name` ↔ `peer` (both down).
    pub async fn create_veth(&self, name: &str, peer: &str) -> Result<(Link, Link), NetlinkError> {
        let what = format!("creating veth pair {name}/{peer}");
        self.handle.link().add(LinkVeth::new(name, peer).build()).execute().await.map_err(fail(what.clone()))?;
        let missing = || NetlinkError { what: what.clone(), cause: "created but not found".into() };
        let host = self.link_by_name(name).await?.ok_or_else(missing)?;
        let peer = self.link_by_name(peer).await?.ok_or_else(missing)?;
        Ok((host, peer))
    }

    /// Gives `link` its MAC and MTU and moves it into the namespace open as `netns`.
    pub async fn move_to_netns(
        &self,
        link: u32,
        mac: [u8; 6],
        mtu: u32,
        netns: &std::fs::File,
    ) -> Result<(), NetlinkError> {
        let message = LinkUnspec::new_with_index(link).address(mac.to_vec()).mtu(mtu).build();
        self.handle.link().set(message).execute().await.map_err(fail(format!("setting up link #{link}")))?;
        let message = LinkUnspec::new_with_index(link).setns_by_fd(netns.as_raw_fd()).build();
        self.handle.link().set(message).execute().await.map_err(fail(format!("moving link #{link} to its namespace")))
    }

    /// Renames `link` to `name` and brings it up (a link must be down to be renamed).
    pub async fn rename_up(&self, link: u32, name: &str) -> Result<(), NetlinkError> {
        let message = LinkUnspec::new_with_index(link).name(name.to_string()).build();
        self.handle.link().set(message).execute().await.map_err(fail(format!("renaming link #{link} to {name}")))?;
        self.set_up(link).await
    }

    /// Brings `link` up.
    pub async fn set_up(&self, link: u32) -> Result<(), NetlinkError> {
        let message = LinkUnspec::new_with_index(link).up().build();
        self.handle.link().set(message).execute().await.map_err(fail(format!("bringing up link #{link}")))
    }

    /// Adds `addr/prefix` to `link`; an address already there is fine.
    pub async fn add_address(&self, link: u32, addr: IpAddr, prefix: u8) -> Result<(), NetlinkError> {
        match self.handle.address().add(link, addr, prefix).execute().await {
            Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -libc::EEXIST => Ok(()),
            other => other.map_err(fail(format!("adding {addr}/{prefix} to link #{link}"))),
        }
    }

    /// The addresses on `link`, with their prefix lengths.
    pub async fn addresses(&self, link: u32) -> Result<Vec<(IpAddr, u8)>, NetlinkError> {
        Ok(self.address_messages(link).await?.iter().filter_map(address_of).collect())
    }

    async fn address_messages(&self, link: u32) -> Result<Vec<AddressMessage>, NetlinkError> {
        let mut addresses = self.handle.address().get().set_link_index_filter(link).execute();
        let mut out = Vec::new();
        while let Some(msg) = addresses.try_next().await.map_err(fail(format!("listing addresses of link #{link}")))? {
            if msg.header.index == link {
                out.push(msg);
            }
        }
        Ok(out)
    }

    /// Removes `addr` from `link`, if it is there.
    pub async fn delete_address(&self, link: u32, addr: IpAddr) -> Result<(), NetlinkError> {
        for msg in self.address_messages(link).await? {
            if address_of(&msg).is_some_and(|(a, _)| a == addr) {
                let what = format!("removing {addr} from link #{link}");
                self.handle.address().del(msg).execute().await.map_err(fail(what))?;
            }
        }
        Ok(())
    }

    /// Whether the main table has an IPv4 default route.
    pub async fn has_default_route(&self) -> Result<bool, NetlinkError> {
        let query = RouteMessageBuilder::<Ipv4Addr>::new().build();
        let mut routes = self.handle.route().get(query).execute();
        while let Some(route) = routes.try_next().await.map_err(fail("listing routes"))? {
            if is_default(&route) {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// Adds the IPv4 default route via `gateway` out of `link`.
    pub async fn add_default_route(&self, link: u32, gateway: Ipv4Addr) -> Result<(), NetlinkError> {
        let route = RouteMessageBuilder::<Ipv4Addr>::new().output_interface(link).gateway(gateway).build();
        self.handle.route().add(route).execute().await.map_err(fail(format!("adding a default route via {gateway}")))
    }
}

fn address_of(msg: &AddressMessage) -> Option<(IpAddr, u8)> {
    let prefix = msg.header.prefix_len;
    msg.attributes
        .iter()
        .find_map(|a| match a {
            AddressAttribute::Local(a) => Some((*a, prefix)),
            _ => None,
        })
        .or_else(|| {
            msg.attributes.iter().find_map(|a| match a {
                AddressAttribute::Address(a) => Some((*a, prefix)),
                _ => None,
            })
        })
}

fn is_default(route: &RouteMessage) -> bool {
    route.header.destination_prefix_length == 0
        && route.header.table == rtnetlink::packet_route::route::RouteHeader::RT_TABLE_MAIN
        && !route.attributes.iter().any(|a| matches!(a, RouteAttribute::Table(t) if *t != 254))
}
