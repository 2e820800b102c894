//! Services built on the overlay. So far: [`ingress`], the routing mesh that publishes a service's port on every
//! host and balances it over the service's backends anywhere in the cluster.
//!
//! The decisions are sans-IO in `overlay_proto` (`service::Catalog` for what exists, `balance::Balancer` for who gets
//! a connection, `wire::proxy` for the PROXY header); this module only listens, connects and copies bytes.

pub mod ingress;
