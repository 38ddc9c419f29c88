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

#[macro_use]
mod common;

use common::check_output;

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
use serde_json::Value;

const USAGE: &str = "\
usage: reproduce [options]

  --network DIR           recorded network trajectories (seeds.npy, xt.npy, eps.npy,
                          final.npy, times.npy); default DATA/cnn-mnist/zeros
  --mnist DIR             MNIST IDX folder of the training set; default DATA/mnist
  --rows A..B             training rows (default 0..5000, the networks' training set)
  --calibrate-rows A..B   training rows of the calibration (default: the first 1000
                          of --rows); the sampled comparison always uses --rows
  --machine M             auto | bbels | els | els-periodic | ls | is; auto (default)
                          is els for a circular-padding network, bbels for a
                          zeros-padding one; is needs no scales (--scales and the
                          calibration options are then ignored)
  --padding P             zeros | circular: the network's padding; default: read
                          from the \"model\" text of DIR/meta.json, which must name
                          exactly one of \"zeros padding\" and \"circular padding\"
  --scales S              auto (calibrate, default) | published | K,K,...
                          (one odd patch side per step, low noise first)
  --candidates K,K,...    candidate sides of the calibration (default 1,3,...,17;
                          the shared networks see 17x17 pixels)
  --criterion C           cosine (default) | l2
  --calibrate-seeds A..B  trajectories to calibrate on (default 0..8)
  --seeds A..B            trajectories to evaluate on (default 8..M)
  --published FILE        published schedules (default DATA/published-scales.json):
                          a JSON object whose \"schedules\" object (or the object
                          itself) maps MNIST_ResNet_zeros / MNIST_ResNet_circular
                          to a list of odd patch sides
  --out FILE.png          output grid (default reproduce.png), checked writable
                          before any work: for every evaluated seed, network,
                          machine and IS outputs side by side
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
    padding: Option<&'static str>,
    /// The options given on the command line, in order.
    given: Vec<String>,
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

/// The options that take a value.
const OPTIONS: &[&str] = &[
    "--calibrate-rows",
    "--calibrate-seeds",
    "--candidates",
    "--criterion",
    "--machine",
    "--mnist",
    "--network",
    "--out",
    "--padding",
    "--published",
    "--rows",
    "--scales",
    "--seeds",
];

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
        padding: None,
        given: Vec::new(),
    };
    let mut args = args.iter();
    while let Some(flag) = args.next() {
        if flag == "--help" || flag == "-h" {
            return Ok(None);
        }
        if !OPTIONS.contains(&flag.as_str()) {
            return Err(format!("unknown option {flag} (see --help)"));
        }
        let value = args
            .next()
            .ok_or_else(|| format!("{flag} needs a value (see --help)"))?;
        options.given.push(flag.clone());
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
            "--padding" => {
                options.padding = Some(match value.as_str() {
                    "zeros" => "zeros",
                    "circular" => "circular",
                    other => return Err(format!("unknown padding {other:?} (zeros or circular)")),
                })
            }
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

/// The padding of the network: `--padding` if given, else the one phrase
/// of "zeros padding" (or "zero padding") and "circular padding" that the
/// "model" text of its `meta.json` contains.
fn padding(network: &Path, given: Option<&'static str>) -> Result<&'static str, String> {
    if let Some(padding) = given {
        return Ok(padding);
    }
    let path = network.join("meta.json");
    let shown = path.display();
    let ask = "give --padding zeros or --padding circular";
    let text =
        std::fs::read_to_string(&path).map_err(|e| format!("cannot read {shown}: {e}; {ask}"))?;
    let meta: Value = serde_json::from_str(&text)
        .map_err(|e| format!("{shown} is not valid JSON ({e}); {ask}"))?;
    let model = meta
        .get("model")
        .and_then(Value::as_str)
        .ok_or_else(|| format!("{shown} has no \"model\" text; {ask}"))?;
    let circular = model.contains("circular padding");
    let zeros = model.contains("zeros padding") || model.contains("zero padding");
    match (zeros, circular) {
        (true, false) => Ok("zeros"),
        (false, true) => Ok("circular"),
        (true, true) => Err(format!(
            "the \"model\" text of {shown} names both zeros and circular padding; {ask}"
        )),
        (false, false) => Err(format!(
            "the \"model\" text of {shown} names neither zeros nor circular padding; {ask}"
        )),
    }
}

/// What kind of JSON value `value` is, for messages.
fn json_kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "an object",
    }
}

/// The schedule `key` of a JSON file of schedules: an object whose
/// "schedules" object, or else the object itself, maps `key` to a
/// non-empty list of odd patch sides.
fn published_schedule(path: &Path, key: &str) -> Result<Vec<usize>, String> {
    let shown = path.display();
    let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read {shown}: {e}"))?;
    let json: Value =
        serde_json::from_str(&text).map_err(|e| format!("{shown} is not valid JSON: {e}"))?;
    let top = json.as_object().ok_or_else(|| {
        format!(
            "{shown} holds {}, not an object of schedules",
            json_kind(&json)
        )
    })?;
    let schedules = match top.get("schedules") {
        Some(Value::Object(inner)) => inner,
        _ => top,
    };
    let value = schedules
        .get(key)
        .ok_or_else(|| format!("{shown} has no schedule {key:?}"))?;
    let list = value.as_array().ok_or_else(|| {
        format!(
            "{shown}: schedule {key:?} is {}, not a list of odd patch sides",
            json_kind(value)
        )
    })?;
    if list.is_empty() {
        return Err(format!("{shown}: schedule {key:?} is an empty list"));
    }
    list.iter()
        .map(|entry| {
            entry
                .as_u64()
                .and_then(|side| usize::try_from(side).ok())
                .filter(|side| side % 2 == 1)
                .ok_or_else(|| {
                    format!("{shown}: schedule {key:?} holds {entry}, not an odd patch side")
                })
        })
        .collect()
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
    if !matches!(
        options.machine.as_str(),
        "auto" | "bbels" | "els" | "els-periodic" | "ls" | "is"
    ) {
        return Err(format!(
            "unknown machine {:?} (auto, bbels, els, els-periodic, ls or is)",
            options.machine
        ));
    }
    check_output(&options.out)?;

    let recording = RecordedTrajectories::<f32>::read(&network).map_err(text)?;
    // The padding is needed to choose the machine (auto) or the published
    // schedule; otherwise it is only shown.
    let needs_padding =
        options.machine == "auto" || (options.machine != "is" && options.scales == "published");
    let padding = if needs_padding {
        Some(padding(&network, options.padding)?)
    } else {
        padding(&network, options.padding).ok()
    };
    let kind = match (options.machine.as_str(), padding) {
        ("auto", Some("circular")) => "els",
        ("auto", _) => "bbels",
        (kind, _) => kind,
    };
    if kind == "is" {
        let ignored: Vec<&str> = options
            .given
            .iter()
            .map(String::as_str)
            .filter(|flag| {
                matches!(
                    *flag,
                    "--scales"
                        | "--candidates"
                        | "--criterion"
                        | "--calibrate-seeds"
                        | "--calibrate-rows"
                        | "--published"
                )
            })
            .collect();
        if !ignored.is_empty() {
            eprintln!(
                "warning: --machine is uses no scale schedule; ignoring {}",
                ignored.join(", ")
            );
        }
    }
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
    say!(
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
            say!(
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
                _ => "MNIST_ResNet_zeros",
            };
            let path = options
                .published
                .clone()
                .unwrap_or_else(|| data.join("published-scales.json"));
            let sides = published_schedule(&path, key)?;
            say!("published schedule {key} from {}", path.display());
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
        say!("scale schedule (low noise first): {sides:?}");
    }

    let machine = build(kind, &training, schedule).map_err(text)?;
    let ideal = Machine::ideal(training.clone(), LegacyCosine).map_err(text)?;
    let sampler = Sampler::new(Method::Ddim, steps).map_err(text)?;
    let evaluated = recording.select(seeds.clone()).map_err(text)?;
    // A constant network output has no correlation with anything: refuse
    // it before sampling.
    for (seed, image) in evaluated.seeds().iter().zip(evaluated.final_images()) {
        let values = image.as_slice();
        if values.iter().all(|&v| v == values[0]) {
            return Err(format!(
                "seed {seed}: the network's final image is constant (every value is {}), so \
                 its correlation with the machines' images is undefined",
                values[0]
            ));
        }
    }
    let progress = bar(2 * evaluated.len() * steps, "sampling");
    let started = Instant::now();
    let mut tick = |_: &StepRecord<'_, f32>| progress.inc(1);
    let run = compare(&evaluated, &machine, &ideal, &sampler, &mut tick).map_err(text)?;
    progress.finish_and_clear();
    let comparison = &run.comparison;
    say!(
        "sampled {} seeds ({}..{}) with {steps}-step DDIM in {:.1} s",
        evaluated.len(),
        seeds.start,
        seeds.end,
        started.elapsed().as_secs_f64()
    );
    if kind == "is" {
        say!("  seed   r IS");
        for seed in comparison.seeds() {
            say!("  {:>4}   {:>6.4}", seed.seed, seed.machine.r);
        }
    } else {
        say!("  seed   r {kind:<6} r IS");
        for seed in comparison.seeds() {
            let verdict = if seed.machine_wins() {
                ""
            } else if seed.machine.r == seed.baseline.r {
                "  (tie)"
            } else {
                "  (IS closer)"
            };
            say!(
                "  {:>4}   {:>8.4} {:>6.4}{verdict}",
                seed.seed,
                seed.machine.r,
                seed.baseline.r
            );
        }
    }
    say!();
    say!(
        "{:<8} {:>9} {:>11} {:>18}",
        "machine",
        "median r",
        "median r^2",
        "fraction beating IS"
    );
    if kind == "is" {
        say!(
            "{:<8} {:>9.4} {:>11.4} {:>18}",
            kind,
            comparison.median_r(),
            comparison.median_r_squared(),
            "-"
        );
    } else {
        say!(
            "{:<8} {:>9.4} {:>11.4} {:>18.3}",
            kind,
            comparison.median_r(),
            comparison.median_r_squared(),
            comparison.fraction_beating_baseline()
        );
        say!(
            "{:<8} {:>9.4} {:>11.4} {:>18}",
            "is",
            comparison.baseline_median_r(),
            comparison.baseline_median_r_squared(),
            "-"
        );
    }

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
    let layout = if grid.len() > 9 {
        "three seeds per row; for each seed"
    } else {
        "for each seed"
    };
    say!(
        "wrote {} ({layout}: network, {kind}, IS)",
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
            say!("{USAGE}");
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
