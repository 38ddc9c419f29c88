//! Tests the theory's central claim on a trained network: calibrate a
//! machine's scale schedule on the network's own trajectories, run machine
//! and ideal score (IS) from the network's initial noise, and measure how
//! well each predicts the network's outputs.
//!
//! ```text
//! cargo run --release --example reproduce
//! cargo run --release --example reproduce -- --network ../shared/data/cnn-mnist/circular \
//!     --machine els --scales published --rows 0..1000
//! ```
//!
//! By default it reads the zero-padding CNN of the shared data
//! (`SCORE_MACHINES_DATA`, else `../shared/data` next to the crate),
//! calibrates on its first 8 trajectories (with the first 1,000 training
//! digits), evaluates on the others with all 5,000, prints
//! a table and writes `reproduce.png`. `--help` lists the options; errors
//! print one line `error: ...` and exit with code 2.

use std::ops::Range;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use indicatif::{ProgressBar, ProgressStyle};
use score_machines::calibrate::{Calibration, CalibrationProgress, Criterion};
use score_machines::compare::compare;
use score_machines::io::idx;
use score_machines::io::png::{GridOptions, write_grid};
use score_machines::prelude::*;
use score_machines::reference::RecordedTrajectories;

const USAGE: &str = "\
usage: reproduce [options]

  --network DIR           recorded network trajectories (seeds.npy, xt.npy, eps.npy,
                          final.npy, times.npy); default DATA/cnn-mnist/zeros
  --mnist DIR             MNIST IDX folder of the training set; default DATA/mnist
  --rows A..B             training rows (default 0..5000, the networks' training set)
  --calibrate-rows A..B   training rows of the calibration (default: the first 1000
                          of --rows); the sampled comparison always uses --rows
  --machine M             auto | bbels | els | els-periodic | ls | is; auto (default)
                          is els for a circular-padding network (from its meta.json),
                          else bbels
  --scales S              auto (calibrate, default) | published | K,K,...
                          (one odd patch side per step, low noise first)
  --candidates K,K,...    candidate sides of the calibration (default 1,3,...,17;
                          the shared networks see 17x17 pixels)
  --criterion C           cosine (default) | l2
  --calibrate-seeds A..B  trajectories to calibrate on (default 0..8)
  --seeds A..B            trajectories to evaluate on (default 8..M)
  --published FILE        published schedules (default DATA/published-scales.json)
  --out FILE.png          output grid (default reproduce.png): for every evaluated
                          seed, network, machine and IS outputs side by side
  --help                  this text

DATA is SCORE_MACHINES_DATA, else ../shared/data next to the crate.
Errors print one line `error: ...` on stderr and exit with code 2.";

#[derive(Debug)]
struct Options {
    network: Option<PathBuf>,
    mnist: Option<PathBuf>,
    rows: Range<usize>,
    calibrate_rows: Option<Range<usize>>,
    machine: String,
    scales: String,
    candidates: Vec<usize>,
    criterion: Criterion,
    calibrate_seeds: Range<usize>,
    seeds: Option<Range<usize>>,
    published: Option<PathBuf>,
    out: PathBuf,
}

fn parse_range(flag: &str, text: &str) -> Result<Range<usize>, String> {
    let (a, b) = text
        .split_once("..")
        .ok_or_else(|| format!("{flag} expects A..B, got {text:?}"))?;
    let start = a.parse().map_err(|_| format!("{flag}: bad start {a:?}"))?;
    let end = b.parse().map_err(|_| format!("{flag}: bad end {b:?}"))?;
    if end <= start {
        return Err(format!("{flag} {text} is empty"));
    }
    Ok(start..end)
}

fn parse_sides(flag: &str, text: &str) -> Result<Vec<usize>, String> {
    text.split(',')
        .map(|s| {
            s.trim()
                .parse()
                .map_err(|_| format!("{flag} expects odd sides K,K,..., got {s:?}"))
        })
        .collect()
}

fn parse(args: &[String]) -> Result<Option<Options>, String> {
    let mut options = Options {
        network: None,
        mnist: None,
        rows: 0..5000,
        calibrate_rows: None,
        machine: "auto".into(),
        scales: "auto".into(),
        candidates: (1..=17).step_by(2).collect(),
        criterion: Criterion::Cosine,
        calibrate_seeds: 0..8,
        seeds: None,
        published: None,
        out: PathBuf::from("reproduce.png"),
    };
    let mut args = args.iter();
    while let Some(flag) = args.next() {
        if flag == "--help" || flag == "-h" {
            return Ok(None);
        }
        let value = args
            .next()
            .ok_or_else(|| format!("{flag} needs a value (see --help)"))?;
        match flag.as_str() {
            "--network" => options.network = Some(PathBuf::from(value)),
            "--mnist" => options.mnist = Some(PathBuf::from(value)),
            "--rows" => options.rows = parse_range(flag, value)?,
            "--calibrate-rows" => options.calibrate_rows = Some(parse_range(flag, value)?),
            "--machine" => options.machine = value.clone(),
            "--scales" => options.scales = value.clone(),
            "--candidates" => options.candidates = parse_sides(flag, value)?,
            "--criterion" => {
                options.criterion = match value.as_str() {
                    "cosine" => Criterion::Cosine,
                    "l2" => Criterion::Distance,
                    other => return Err(format!("unknown criterion {other:?} (cosine or l2)")),
                }
            }
            "--calibrate-seeds" => options.calibrate_seeds = parse_range(flag, value)?,
            "--seeds" => options.seeds = Some(parse_range(flag, value)?),
            "--published" => options.published = Some(PathBuf::from(value)),
            "--out" => options.out = PathBuf::from(value),
            other => return Err(format!("unknown option {other} (see --help)")),
        }
    }
    Ok(Some(options))
}

/// `SCORE_MACHINES_DATA`, else `../shared/data` next to the crate.
fn data_dir() -> PathBuf {
    std::env::var_os("SCORE_MACHINES_DATA")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/data"))
}

/// The padding the network's `meta.json` names, if any.
fn padding(network: &Path) -> Option<&'static str> {
    let meta = std::fs::read_to_string(network.join("meta.json")).ok()?;
    if meta.contains("circular padding") {
        Some("circular")
    } else if meta.contains("zeros padding") || meta.contains("zero padding") {
        Some("zeros")
    } else {
        None
    }
}

/// The list of numbers under `"key": [ ... ]` in a JSON file of schedules.
fn published_schedule(path: &Path, key: &str) -> Result<Vec<usize>, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let quoted = format!("\"{key}\"");
    let start = text
        .find(&quoted)
        .ok_or_else(|| format!("{} has no schedule {key:?}", path.display()))?;
    let rest = &text[start + quoted.len()..];
    let open = rest
        .find('[')
        .ok_or_else(|| format!("{}: no list after {key:?}", path.display()))?;
    let close = rest[open..]
        .find(']')
        .ok_or_else(|| format!("{}: unterminated list after {key:?}", path.display()))?;
    parse_sides(key, rest[open + 1..open + close].trim())
}

/// A machine of kind `kind` over `training` with locality `locality`.
fn build<L: Locality + 'static>(
    kind: &str,
    training: &TrainingSet<f32>,
    locality: L,
) -> Result<Box<dyn ScoreFunction<f32>>, Error> {
    let training = training.clone();
    Ok(match kind {
        "bbels" => Box::new(Machine::equivariant_local_zero_padded(
            training,
            LegacyCosine,
            locality,
        )?),
        "els" => Box::new(Machine::equivariant_local(
            training,
            LegacyCosine,
            locality,
        )?),
        "els-periodic" => Box::new(Machine::equivariant_local_periodic(
            training,
            LegacyCosine,
            locality,
        )?),
        "ls" => Box::new(Machine::local(training, LegacyCosine, locality)?),
        _ => Box::new(Machine::ideal(training, LegacyCosine)?),
    })
}

fn bar(total: usize, message: &'static str) -> ProgressBar {
    let bar = ProgressBar::new(total as u64);
    bar.set_style(
        ProgressStyle::with_template(
            "{msg} {bar:40} {pos}/{len} evaluations, {elapsed} elapsed, eta {eta}",
        )
        .expect("valid template"),
    );
    bar.set_message(message);
    bar
}

fn run(options: Options) -> Result<(), String> {
    let text = |e: Error| e.to_string();
    let data = data_dir();
    let network = options
        .network
        .clone()
        .unwrap_or_else(|| data.join("cnn-mnist/zeros"));
    let mnist = options.mnist.clone().unwrap_or_else(|| data.join("mnist"));
    let padding = padding(&network);
    let kind = match (options.machine.as_str(), padding) {
        ("auto", Some("circular")) => "els",
        ("auto", _) => "bbels",
        (kind @ ("bbels" | "els" | "els-periodic" | "ls" | "is"), _) => kind,
        (other, _) => {
            return Err(format!(
                "unknown machine {other:?} (auto, bbels, els, els-periodic, ls or is)"
            ));
        }
    };

    let recording = RecordedTrajectories::<f32>::read(&network).map_err(text)?;
    let steps = recording.steps();
    for (step, &t) in recording.times().iter().enumerate() {
        let grid = (steps - step) as f64 / steps as f64;
        if (t - grid).abs() > 1e-6 {
            return Err(format!(
                "{}: step {step} is at t = {t}, not on the DDIM grid i / {steps}",
                network.display()
            ));
        }
    }
    let count = recording.len();
    let seeds = options
        .seeds
        .clone()
        .unwrap_or(options.calibrate_seeds.end.min(count)..count);
    let calibrating = options.scales == "auto" && kind != "is";
    for (flag, range) in [
        ("--seeds", &seeds),
        ("--calibrate-seeds", &options.calibrate_seeds),
    ] {
        if range.is_empty() || range.end > count {
            return Err(format!(
                "{flag} {}..{} is outside the {count} recorded trajectories",
                range.start, range.end
            ));
        }
    }
    if calibrating
        && seeds.start < options.calibrate_seeds.end
        && options.calibrate_seeds.start < seeds.end
    {
        return Err(format!(
            "calibration trajectories {:?} overlap the evaluated ones {:?}",
            options.calibrate_seeds, seeds
        ));
    }

    let training: TrainingSet<f32> =
        idx::read_mnist_rows(&mnist, options.rows.clone()).map_err(text)?;
    if training.shape() != recording.shape() {
        return Err(format!(
            "training images are {} but the network's are {}",
            training.shape(),
            recording.shape()
        ));
    }
    println!(
        "network {} ({} padding), {count} trajectories of {steps} steps; machine {kind}; \
         {} training images (rows {}..{})",
        network.display(),
        padding.unwrap_or("unknown"),
        training.len(),
        options.rows.start,
        options.rows.end
    );

    let sides: Vec<usize> = match options.scales.as_str() {
        _ if kind == "is" => vec![1; steps],
        "auto" => {
            let calibration_set = recording
                .select(options.calibrate_seeds.clone())
                .map_err(text)?;
            let rows = options.calibrate_rows.clone().unwrap_or_else(|| {
                options.rows.start..options.rows.end.min(options.rows.start + 1000)
            });
            let calibration_training: TrainingSet<f32> =
                idx::read_mnist_rows(&mnist, rows.clone()).map_err(text)?;
            let total = options.candidates.len() * steps * calibration_set.len();
            let progress = bar(total, "calibrating");
            let started = Instant::now();
            let calibration = Calibration::run(
                &calibration_set,
                &options.candidates,
                |side| build(kind, &calibration_training, SquarePatch::new(side)?),
                |_: CalibrationProgress| progress.inc(1),
            )
            .map_err(text)?;
            progress.finish_and_clear();
            println!(
                "calibrated on trajectories {}..{} with training rows {}..{} over sides {:?} \
                 in {:.1} s:\n{calibration}",
                options.calibrate_seeds.start,
                options.calibrate_seeds.end,
                rows.start,
                rows.end,
                calibration.candidates(),
                started.elapsed().as_secs_f64()
            );
            calibration
                .schedule(options.criterion)
                .map_err(text)?
                .sides()
                .to_vec()
        }
        "published" => {
            let key = match padding {
                Some("circular") => "MNIST_ResNet_circular",
                Some(_) => "MNIST_ResNet_zeros",
                None => {
                    return Err(format!(
                        "{} names no padding in meta.json; give --scales K,K,...",
                        network.display()
                    ));
                }
            };
            let path = options
                .published
                .clone()
                .unwrap_or_else(|| data.join("published-scales.json"));
            let sides = published_schedule(&path, key)?;
            println!("published schedule {key} from {}", path.display());
            sides
        }
        list => parse_sides("--scales", list)?,
    };
    if sides.len() != steps {
        return Err(format!(
            "the scale schedule has {} sides but the network took {steps} steps",
            sides.len()
        ));
    }
    let schedule = ScaleSchedule::new(sides.clone()).map_err(text)?;
    if kind != "is" {
        println!("scale schedule (low noise first): {sides:?}");
    }

    let machine = build(kind, &training, schedule).map_err(text)?;
    let ideal = Machine::ideal(training.clone(), LegacyCosine).map_err(text)?;
    let sampler = Sampler::new(Method::Ddim, steps).map_err(text)?;
    let evaluated = recording.select(seeds.clone()).map_err(text)?;
    let progress = bar(2 * evaluated.len() * steps, "sampling");
    let started = Instant::now();
    let mut tick = |_: &StepRecord<'_, f32>| progress.inc(1);
    let run = compare(&evaluated, &machine, &ideal, &sampler, &mut tick).map_err(text)?;
    progress.finish_and_clear();
    let comparison = &run.comparison;
    println!(
        "sampled {} seeds ({}..{}) with {steps}-step DDIM in {:.1} s",
        evaluated.len(),
        seeds.start,
        seeds.end,
        started.elapsed().as_secs_f64()
    );
    println!("  seed   r {kind:<6} r IS");
    for seed in comparison.seeds() {
        println!(
            "  {:>4}   {:>8.4} {:>6.4}{}",
            seed.seed,
            seed.machine.r,
            seed.baseline.r,
            if seed.machine_wins() {
                ""
            } else {
                "  (IS closer)"
            }
        );
    }
    println!();
    println!(
        "{:<8} {:>9} {:>11} {:>18}",
        "machine", "median r", "median r^2", "fraction beating IS"
    );
    println!(
        "{:<8} {:>9.4} {:>11.4} {:>18.3}",
        kind,
        comparison.median_r(),
        comparison.median_r_squared(),
        comparison.fraction_beating_baseline()
    );
    println!(
        "{:<8} {:>9.4} {:>11.4} {:>18}",
        "is",
        comparison.baseline_median_r(),
        comparison.baseline_median_r_squared(),
        "-"
    );

    let mut grid = Vec::with_capacity(3 * evaluated.len());
    for (index, reference) in evaluated.final_images().into_iter().enumerate() {
        grid.push(reference);
        grid.push(run.machine[index].clone());
        grid.push(run.baseline[index].clone());
    }
    let grid_options = GridOptions {
        columns: Some(9),
        scale: 3,
        padding: 2,
        ..GridOptions::default()
    };
    write_grid(&options.out, &grid, &grid_options).map_err(text)?;
    println!(
        "wrote {} (three seeds per row; for each: network, {kind}, IS)",
        options.out.display()
    );
    Ok(())
}

fn main() -> ExitCode {
    let mut args = Vec::new();
    for arg in std::env::args_os().skip(1) {
        match arg.into_string() {
            Ok(arg) => args.push(arg),
            Err(arg) => {
                eprintln!("error: argument {arg:?} is not valid UTF-8");
                return ExitCode::from(2);
            }
        }
    }
    let result = parse(&args).and_then(|options| match options {
        Some(options) => run(options),
        None => {
            println!("{USAGE}");
            Ok(())
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("error: {message}");
            ExitCode::from(2)
        }
    }
}
