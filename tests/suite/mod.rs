mod daemon;
mod egress;
mod identity;
mod policy;
mod proxy;
mod sandbox;
mod server;
