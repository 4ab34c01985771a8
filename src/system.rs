//! The running system, owned in one place: every shared part (the directory and its
//! registry, the EPMD server, the forwarder, the open links, readiness, the gateway in
//! force), the connection limits, the task trackers and the public dist ports.
//!
//! [`System::build`] composes it from a configuration, [`System::run`] serves until
//! shutdown and drains, and [`System::apply`] puts a reload's [`Change`] in force.
//! Nothing else holds a part of it but by `Arc` from here.

mod public_ports;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};

use crate::accept::Acceptor;
use crate::config::Config;
use crate::directory::{Directory, Routes};
use crate::federation::Federation;
use crate::forward::public::Forwarder;
use crate::gateway::Gateway;
use crate::limit::Limit;
use crate::links::Links;
use crate::live::Live;
use crate::ports::{PortPlan, Ports};
use crate::ready::Health;
use crate::registry::PortMove;
use crate::{Drain, SetupError, admin, epmd, forward, metrics};
pub(crate) use public_ports::PublicPorts;

/// A running distgate's parts.
#[derive(Debug)]
pub(crate) struct System {
    pub(crate) directory: Arc<Directory>,
    pub(crate) links: Arc<Links>,
    pub(crate) health: Arc<Health>,
    epmd: Arc<epmd::Server>,
    epmd_limit: Arc<Limit>,
    forwarder: Arc<Forwarder>,
    dist_limit: Arc<Limit>,
    /// The public dist ports served.
    pub(crate) public: PublicPorts,
    /// The gateway in force (the admin's `/nodes` reads it too).
    gateway: Live<Option<Arc<Gateway>>>,
    /// What peer gateways are dialled and served with (`[federation]`).
    federation: Option<Arc<Federation>>,
    federation_limit: Arc<Limit>,
    /// Stops the maintenance loops of the gateway in force.
    maintain: Mutex<Option<CancellationToken>>,
    /// `[shutdown] grace` in force, read when the drain begins.
    grace: Live<Duration>,
    admin_slots: Arc<admin::Slots>,
    admin_header_timeout: Duration,
    /// How often the series of open links are kept from ageing out.
    touch_every: Duration,
    shutdown: CancellationToken,
    /// Every connection's task (EPMD and dist): the drain waits for them.
    connections: TaskTracker,
    /// The accept loops and the loops that keep the parts tidy; public ports a reload
    /// adds join them. Shutdown stops them before the drain.
    loops: TaskTracker,
}

/// A reload, prepared: everything that can fail is done (the ports added are bound,
/// the gateway of the new routes is built), so putting it in force cannot fail.
#[derive(Debug)]
pub(crate) struct Change {
    /// The configuration to put in force.
    pub(crate) config: Config,
    /// Public ports added to the pool, bound on each address of `[dist] listen`.
    pub(crate) added: Vec<(u16, Vec<TcpListener>)>,
    /// Public ports taken out of the pool.
    pub(crate) removed: Vec<u16>,
    /// Whether the pool, the pins or the client names changed: nodes may move.
    pub(crate) plan_changed: bool,
    /// When the routes, `[dns]` or the pool changed: the gateway to put in force
    /// (`None`: no routes any more).
    pub(crate) gateway: Option<Option<Gateway>>,
}

impl System {
    /// What peer gateways are dialled and served with.
    pub(crate) fn federation(&self) -> Option<Arc<Federation>> {
        self.federation.clone()
    }
}

impl System {
    /// Composes a distgate for `config` whose public ports are `plan`; cancelling
    /// `shutdown` stops it.
    pub(crate) fn build(
        config: &Config,
        plan: PortPlan,
        shutdown: CancellationToken,
    ) -> Result<System, SetupError> {
        let ports = Arc::new(Ports::new(plan));
        let federation = Federation::from_config(&config.federation, &config.routes)?.map(Arc::new);
        let gateway = Gateway::from_config(config, Arc::clone(&ports))?
            .map(|g| g.with_federation(federation.clone(), config.dist.connect_timeout))
            .map(Arc::new);
        let routes = gateway.clone().map(|g| g as Arc<dyn Routes>);
        let directory = Arc::new(Directory::new(ports, routes));
        let connections = TaskTracker::new();
        let loops = TaskTracker::new();
        let epmd_limit = Arc::new(Limit::new("epmd", config.epmd.max_connections.get()));
        let dist_limit = Arc::new(Limit::new("dist", config.dist.max_connections.get()));
        let acceptor = |listener, limit: &Arc<Limit>| Acceptor {
            listener,
            limit: Some(Arc::clone(limit)),
            shutdown: shutdown.clone(),
            tracker: connections.clone(),
            on_full: None,
        };
        let epmd = Arc::new(epmd::Server::new(
            config.epmd.clone(),
            Arc::clone(&directory),
            acceptor("epmd", &epmd_limit),
        ));
        let engine = Arc::new(forward::Engine::new(
            config.forward.mode,
            config.forward.pipe_size,
        ));
        let links = Links::new(config.dist.silent_after);
        let forwarder = Arc::new(Forwarder::new(
            Arc::clone(&directory),
            engine,
            Arc::clone(&links),
            &config.dist,
            &config.metrics,
            acceptor("dist", &dist_limit),
        ));
        let health = Arc::new(Health::new(
            config.admin.ready_when.clone(),
            Arc::clone(directory.registry()),
            shutdown.clone(),
        ));
        health.set_discovery(gateway.as_ref().map(|g| g.discovering()));
        forwarder.set_federation(federation.clone());
        let federation_limit = Arc::new(Limit::new(
            "federation",
            config.federation.max_connections.get(),
        ));
        Ok(System {
            federation,
            federation_limit,
            public: PublicPorts::new(Arc::clone(&forwarder), loops.clone(), shutdown.clone()),
            directory,
            links,
            health,
            epmd,
            epmd_limit,
            forwarder,
            dist_limit,
            gateway: Live::new(gateway),
            maintain: Mutex::new(None),
            grace: Live::new(config.shutdown.grace),
            admin_slots: admin::Slots::new(config.admin.max_connections.get()),
            admin_header_timeout: config.admin.header_timeout,
            touch_every: (config.metrics.idle_timeout / 4).max(Duration::from_millis(100)),
            shutdown,
            connections,
            loops,
        })
    }

    /// The gateway in force.
    pub(crate) fn gateway(&self) -> Option<Arc<Gateway>> {
        (*self.gateway.get()).clone()
    }

    /// Starts serving EPMD on `epmd` and the public dist ports on `dist`, and the
    /// gateway's maintenance: called once, under the reload lock (a reload waits for
    /// it, and one before it is refused as `Starting`).
    pub(crate) fn start(
        &self,
        epmd: Vec<TcpListener>,
        dist: Vec<(u16, TcpListener)>,
        federation: Vec<TcpListener>,
    ) {
        for listener in epmd {
            self.loops.spawn(Arc::clone(&self.epmd).serve(listener));
        }
        if let Some(fed) = &self.federation {
            let acceptor = Acceptor {
                listener: "federation",
                limit: Some(Arc::clone(&self.federation_limit)),
                shutdown: self.shutdown.clone(),
                tracker: self.connections.clone(),
                on_full: None,
            };
            for listener in federation {
                let serve = Arc::clone(&self.forwarder).serve_federation(
                    listener,
                    Arc::clone(fed),
                    acceptor.clone(),
                );
                self.loops.spawn(serve);
            }
            self.loops
                .spawn(Arc::clone(fed).watch(self.shutdown.clone()));
        }
        self.public.start(dist);
        self.start_maintenance(self.gateway());
    }

    /// Once [`System::start`]ed, serves until shutdown, then waits up to `[shutdown]
    /// grace` (as in force then) for open connections to end. The admin endpoints on
    /// `admin` (with `/metrics` from `metrics`, and `POST /reload` through `control`)
    /// serve until the drain is over, with `/readyz` failing from the moment shutdown
    /// begins.
    pub(crate) async fn serve(
        self: Arc<Self>,
        admin: Vec<TcpListener>,
        metrics: Option<metrics::Exporter>,
        control: Arc<dyn admin::Control>,
    ) -> Drain {
        let stop = || self.shutdown.clone();
        self.loops
            .spawn(Arc::clone(&self.forwarder).sweep_bans(stop()));
        self.loops
            .spawn(Arc::clone(&self.forwarder).trim_pipes(stop()));
        self.loops.spawn(touch_live_links(self.touch_every, stop()));
        self.loops.close();
        let admin_stop = CancellationToken::new();
        let admin_loops = TaskTracker::new();
        // The links sweep brings their byte counters up to date: it goes on while the
        // drain lets open links finish, as /metrics does.
        admin_loops.spawn(Arc::clone(&self.links).watch(admin_stop.clone()));
        self.serve_admin(admin, metrics, control, &admin_stop, &admin_loops);
        self.health.set_listening();
        self.shutdown.cancelled().await;
        self.loops.wait().await;
        let drain = self.drain().await;
        admin_stop.cancel();
        admin_loops.wait().await;
        drain
    }

    fn serve_admin(
        &self,
        listeners: Vec<TcpListener>,
        metrics: Option<metrics::Exporter>,
        control: Arc<dyn admin::Control>,
        stop: &CancellationToken,
        loops: &TaskTracker,
    ) {
        let acceptor = Acceptor {
            listener: "admin",
            limit: None,
            shutdown: stop.clone(),
            tracker: loops.clone(),
            on_full: None,
        };
        let views = admin::Views {
            links: Arc::clone(&self.links),
            registry: Arc::clone(self.directory.registry()),
            control,
            gate: self.forwarder.gate(),
            answering: Arc::new(tokio::sync::Semaphore::new(admin::Views::AT_ONCE)),
        };
        if !listeners.is_empty() {
            let metrics = metrics.unwrap_or_else(metrics::Exporter::detached);
            for listener in listeners {
                loops.spawn(admin::serve(
                    listener,
                    metrics.clone(),
                    Arc::clone(&self.health),
                    views.clone(),
                    acceptor.clone(),
                    Arc::clone(&self.admin_slots),
                    self.admin_header_timeout,
                ));
            }
        }
        loops.close();
    }

    /// Waits up to `[shutdown] grace` for the open connections to end.
    async fn drain(&self) -> Drain {
        self.connections.close();
        info!(
            open = self.connections.len(),
            "stopped accepting; draining connections"
        );
        let grace = *self.grace.get();
        if tokio::time::timeout(grace, self.connections.wait())
            .await
            .is_ok()
        {
            info!("drain complete");
            Drain::Complete
        } else {
            let open = self.connections.len();
            warn!(open, "grace period over; dropping open connections");
            Drain::TimedOut { open }
        }
    }

    /// Puts `change` in force, in one step: limits, admission, timeouts and
    /// `ready_when` for what comes next; the pool and pins (nodes whose port no longer
    /// fits move); the gateway; the public ports added and removed.
    pub(crate) fn apply(&self, change: Change) -> Config {
        let Change {
            config: new,
            added,
            removed,
            plan_changed,
            gateway,
        } = change;
        self.epmd.set_config(new.epmd.clone());
        self.epmd_limit.set_max(new.epmd.max_connections.get());
        self.forwarder.set_config(&new.dist);
        if let Some(federation) = &self.federation {
            federation.set_config(&new.federation);
        }
        self.dist_limit.set_max(new.dist.max_connections.get());
        self.links.set_silent_after(new.dist.silent_after);
        self.health.set_ready_when(new.admin.ready_when.clone());
        self.grace.set(new.shutdown.grace);
        if plan_changed {
            self.replan(&new);
        }
        if let Some(gateway) = gateway {
            self.replace_gateway(gateway);
        }
        for (port, listeners) in added {
            self.public.add(port, listeners);
        }
        for port in removed {
            self.public.remove(port);
        }
        new
    }

    /// Moves the nodes whose public port no longer fits the new pool and pins.
    fn replan(&self, new: &Config) {
        let registry = self.directory.registry();
        for moved in registry.replan(new.dist.port_plan()) {
            let PortMove {
                name: node,
                from,
                to,
                client,
            } = moved;
            match to {
                Some(to) => info!(node, from, to, "node's public port changed by the reload"),
                None if client => info!(
                    node,
                    from,
                    "node is a release client by `dist.client_names` after the reload: its public port is given back"
                ),
                None => warn!(
                    node,
                    from,
                    "node without a public port after the reload: the pool `dist.ports` has none left for it"
                ),
            }
        }
    }

    /// Puts `new` (built from the new routes) in place of the gateway in force: it
    /// takes over the old one's leases and discovered names; the old one's
    /// maintenance stops. Without routes the routed names' ports go back to the pool.
    fn replace_gateway(&self, new: Option<Gateway>) {
        self.stop_maintenance();
        let old = self.gateway();
        let new = new.map(|mut gateway| {
            if let Some(old) = &old {
                gateway.succeed(old);
            }
            Arc::new(gateway)
        });
        if new.is_none()
            && let Some(old) = &old
        {
            old.retire();
        }
        (self.health).set_discovery(new.as_ref().map(|g| g.discovering()));
        (self.directory).set_routes(new.clone().map(|g| g as Arc<dyn Routes>));
        self.gateway.set(new.clone());
        self.start_maintenance(new);
    }

    /// Stops the maintenance of the gateway in force.
    fn stop_maintenance(&self) {
        let stop = (self.maintain.lock().unwrap_or_else(|p| p.into_inner())).take();
        if let Some(stop) = stop {
            stop.cancel();
        }
    }

    /// Runs `gateway`'s maintenance (stopping any still running) until shutdown. Not
    /// among the loops the drain waits for: it stops the moment shutdown begins,
    /// whatever the upstreams do.
    fn start_maintenance(&self, gateway: Option<Arc<Gateway>>) {
        self.stop_maintenance();
        let mut maintain = self.maintain.lock().unwrap_or_else(|p| p.into_inner());
        *maintain = gateway.map(|gateway| {
            let stop = self.shutdown.child_token();
            tokio::spawn(gateway.maintain(stop.clone()));
            stop
        });
    }
}

/// Keeps the series of open links from ageing out, every `every`, until `shutdown`.
async fn touch_live_links(every: Duration, shutdown: CancellationToken) {
    let mut ticks = tokio::time::interval(every);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = ticks.tick() => metrics::touch_live_links(),
        }
    }
}
