//! Links and addresses through rtnetlink: the bridge each network's TAP joins, the TAP's MTU and state, and the
//! underlay address check. No `ip` command is ever run.

use std::net::IpAddr;

use futures::TryStreamExt;
use rtnetlink::packet_route::address::AddressAttribute;
use rtnetlink::packet_route::link::{LinkAttribute, LinkMessage};
use rtnetlink::{Handle, LinkBridge, LinkUnspec};

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
}

impl Link {
    fn from_message(msg: &LinkMessage) -> Self {
        let mut link = Link { index: msg.header.index, name: String::new(), mtu: 0, alias: None };
        for attr in &msg.attributes {
            match attr {
                LinkAttribute::IfName(name) => link.name = name.clone(),
                LinkAttribute::Mtu(mtu) => link.mtu = *mtu,
                LinkAttribute::IfAlias(alias) => link.alias = Some(alias.clone()),
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

    /// Deletes a link.
    pub async fn delete_link(&self, index: u32) -> Result<(), NetlinkError> {
        self.handle.link().del(index).execute().await.map_err(fail(format!("deleting link #{index}")))
    }

    /// Adds `addr/prefix` to `link` (replacing an identical one a crashed weft left behind).
    pub async fn add_address(&self, link: u32, addr: IpAddr, prefix: u8) -> Result<(), NetlinkError> {
        self.handle
            .address()
            .add(link, addr, prefix)
            .replace()
            .execute()
            .await
            .map_err(fail(format!("adding {addr}/{prefix} to link #{link}")))
    }

    /// Removes `addr` from `link`, if it is there.
    pub async fn delete_address(&self, link: u32, addr: IpAddr) -> Result<(), NetlinkError> {
        let mut addresses = self.handle.address().get().set_link_index_filter(link).set_address_filter(addr).execute();
        let what = format!("removing {addr} from link #{link}");
        while let Some(msg) = addresses.try_next().await.map_err(fail(what.clone()))? {
            self.handle.address().del(msg).execute().await.map_err(fail(what.clone()))?;
        }
        Ok(())
    }
}
