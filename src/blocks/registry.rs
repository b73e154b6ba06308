//! The generator behind the block table in `blocks/mod.rs`. One `registry!` invocation
//! lists every block once; from it come [`BlockKind`](super::BlockKind) with its names,
//! aliases and pool, `BlockKind::ALL` (sized by the list, so `Metrics::task_done` indexes
//! what exists), the per-thread [`Blocks`](super::Blocks), the decoder dispatch
//! ([`decode_job`](super::decode_job)) and the execution dispatch ([`Blocks::run`](super::Blocks::run)).
//! Every generated `match` over kinds is exhaustive; the only default is `parse`'s, for
//! text that names no kind.

/// Where a kind's assignments wait and are counted (`worker_pool_queue_depth{pool}`,
/// `worker_pool_in_flight{pool}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Pool {
    /// On the CPU thread that took the assignment.
    Cpu,
    /// On the pinned io_uring shards of `beamline_io`.
    Io,
    /// On the GPU pool of `beamline_gpu` (its CPU fallback included).
    Gpu,
}

impl Pool {
    pub const ALL: [Pool; 3] = [Pool::Cpu, Pool::Io, Pool::Gpu];

    /// The metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Pool::Cpu => "cpu",
            Pool::Io => "io",
            Pool::Gpu => "gpu",
        }
    }
}

/// `field: module::Type { Variant = "canonical" | "alias"... => Pool, ... }`, one entry per
/// block; a block that runs several kinds (`fs`: `fs.put` and `fs.get`) lists them all.
macro_rules! registry {
    ($(
        $(#[$doc:meta])*
        $field:ident: $module:ident::$block:ident {
            $( $variant:ident = $name:literal $(| $alias:literal)* => $pool:ident ),+ $(,)?
        }
    ),+ $(,)?) => {
        /// The block types this worker runs (`job.type`), in registry order.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum BlockKind {
            $( $( $variant, )+ )+
        }

        impl BlockKind {
            /// How many kinds there are.
            pub const COUNT: usize = [$( $( stringify!($variant) ),+ ),+].len();

            /// Every kind, in registry order: `ALL[k.index()] == k`.
            pub const ALL: [BlockKind; BlockKind::COUNT] = [$( $( BlockKind::$variant ),+ ),+];

            /// `job.type` → kind; the original worker's names (aliases) are accepted too.
            pub fn parse(job_type: &str) -> Option<BlockKind> {
                match job_type {
                    $( $( $name $(| $alias)* => Some(BlockKind::$variant), )+ )+
                    // Text that names no kind: the one default arm of the registry.
                    _ => None,
                }
            }

            /// The canonical name (`job.type`, the metric label).
            pub fn as_str(self) -> &'static str {
                match self {
                    $( $( BlockKind::$variant => $name, )+ )+
                }
            }

            /// Other names [`BlockKind::parse`] accepts for this kind.
            pub fn aliases(self) -> &'static [&'static str] {
                match self {
                    $( $( BlockKind::$variant => &[$( $alias ),*], )+ )+
                }
            }

            /// Which pool's queue this kind waits in.
            pub fn pool(self) -> Pool {
                match self {
                    $( $( BlockKind::$variant => Pool::$pool, )+ )+
                }
            }

            /// The block that runs this kind: its module under `blocks/`, its field in
            /// [`Blocks`], its fuzz target (`job_<block>`). Kinds of one block share its
            /// decoder.
            pub fn block(self) -> &'static str {
                match self {
                    $( $( BlockKind::$variant => stringify!($field), )+ )+
                }
            }

            /// Position in [`BlockKind::ALL`] (metric arrays are indexed by it).
            pub fn index(self) -> usize {
                self as usize
            }
        }

        /// The blocks of one CPU thread (each holds that thread's pools and caches).
        #[derive(Debug)]
        pub struct Blocks {
            $( $(#[$doc])* pub $field: $module::$block, )+
        }

        impl Blocks {
            /// Builds every block for the calling CPU thread.
            pub fn new(ctx: &BuildContext) -> Result<Blocks, BuildError> {
                Ok(Blocks {
                    $( $field: <$module::$block as Block>::build(ctx)?, )+
                })
            }

            /// Hands the block that runs `kind` to `job`: the runtime's one dispatch.
            pub fn run<'b, R: RunBlock<'b>>(&'b self, kind: BlockKind, job: R) -> R::Output {
                match kind {
                    $( $( BlockKind::$variant )|+ => job.run(&self.$field), )+
                }
            }
        }

        /// Decodes `job` as block `kind` does before the ack (through [`Block::decode_with`])
        /// and drops the decoded job. Builds no block: for fuzz targets and property tests,
        /// and anything else that wants to judge a job without running it.
        pub fn decode_job(
            kind: BlockKind,
            job: Fields<'_, '_>,
            assignment_id: &str,
            settings: &DecodeSettings,
        ) -> Result<(), TaskError> {
            match kind {
                $( $( BlockKind::$variant )|+ => {
                    <$module::$block as Block>::decode_with(job, settings, assignment_id).map(drop)
                } )+
            }
        }
    };
}
