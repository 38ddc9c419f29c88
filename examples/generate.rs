//! Generates images with a score machine from a real training set, and
//! shows how creative they are: each sample beside its nearest training
//! image, with the distance between them.
//!
//! ```text
//! cargo run --release --example generate
//! cargo run --release --example generate -- --mnist ../shared/data/mnist --machine els --samples 8
//! ```
//!
//! Without `--mnist` it uses the 1,797 UCI handwritten digits (8x8, embedded
//! in the `smartcore` crate), so it needs no file. `--mnist DIR` reads the
//! train split of the IDX files in DIR if it is there, otherwise the test
//! split (`t10k-*`). `--help` lists the options.

#[macro_use]
mod common;

use common::check_output;

use std::ffi::{OsStr, OsString};
use std::ops::Range;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use indicatif::{ProgressBar, ProgressStyle};
use score_machines::io::idx;
use score_machines::io::png::{GridOptions, MAX_GRID_BYTES, MAX_GRID_SIDE, write_grid};
use score_machines::prelude::*;
use score_machines::sampler::{Method, Sampler, StepRecord, initial_noise};
use score_machines::{
    EquivariantLocalScore, IdealScore, LocalScore, ZeroPaddedEquivariantLocalScore,
};

const USAGE: &str = "\
usage: generate [options]

  --mnist DIR        train on IDX files in DIR (MNIST or Fashion-MNIST): the
                     train split (train-*-ubyte, raw or .gz) if DIR holds
                     it, otherwise the test split (t10k-*-ubyte);
                     default: the embedded 8x8 UCI digits
  --rows A..B        training rows of the IDX files (default 0..5000)
  --machine M        is | ls | els | bbels (default bbels: ELS with
                     zero-padded windows)
  --scales K,K,...   one odd patch side per step, low noise first (default:
                     for images of side 24 or more the schedule published
                     for an MNIST ResNet, 3 to 15; else 3 to 7; stretched
                     to the number of steps)
  --k K              one patch side for every step (instead of --scales)
  --steps N          sampler steps, 1 to 100000 (default 20)
  --sampler S        ddim | ddpm | euler | heun (default ddim)
  --seed N           seed of the initial noise (default 0)
  --samples N        number of samples, 1 to 100000 (default 16)
  --class C          sample from the images of class C only
  --copy-below D     RMS pixel distance (finite, at least 0) under which a
                     sample counts as a copy of its nearest training image
                     (default 0.1)
  --out FILE.png     output grid (default generated.png); its folder must
                     exist
  --explain          explain each sample as a mosaic of training patches:
                     the training images its pixels' nearest patches come
                     from (at t = 0, with the machine's patch there)
  --help             this text

Every error prints one line `error: ...` and exits with status 2.";

/// Scale schedule for 28x28 images: the one published for a zero-padded
/// MNIST ResNet, entry j for the step at t = (j + 1) / 20.
const SCALES_28: [usize; 20] = [
    3, 3, 5, 5, 5, 7, 7, 7, 9, 9, 11, 11, 11, 11, 13, 15, 15, 15, 15, 15,
];

/// Scale schedule for 8x8 images: 3x3 patches at low noise, growing to
/// 7x7 (the largest patch with interior candidates) at high noise.
const SCALES_8: [usize; 20] = [3, 3, 3, 3, 3, 3, 3, 5, 5, 5, 5, 5, 5, 5, 7, 7, 7, 7, 7, 7];

/// Most samples one run draws.
const MAX_SAMPLES: usize = 100_000;

/// Most sampler steps one run takes.
const MAX_STEPS: usize = 100_000;

/// Cells per row of the output grid (a sample, then its nearest training
/// image, four pairs a row).
const GRID_COLUMNS: usize = 8;

#[derive(Debug)]
struct Options {
    mnist: Option<PathBuf>,
    rows: Range<usize>,
    machine: String,
    scales: Option<Vec<usize>>,
    k: Option<usize>,
    steps: usize,
    sampler: String,
    seed: u64,
    samples: usize,
    class: Option<usize>,
    copy_below: f64,
    out: PathBuf,
    explain: bool,
}

/// The machine, kept by kind so that its samples can be explained.
enum Generator {
    Ideal(IdealScore<f32, LegacyCosine>),
    Local(LocalScore<f32, LegacyCosine, ScaleSchedule>),
    Els(EquivariantLocalScore<f32, LegacyCosine, ScaleSchedule>),
    BbEls(ZeroPaddedEquivariantLocalScore<f32, LegacyCosine, ScaleSchedule>),
}

impl Generator {
    fn score(&self) -> &dyn ScoreFunction<f32> {
        match self {
            Generator::Ideal(m) => m,
            Generator::Local(m) => m,
            Generator::Els(m) => m,
            Generator::BbEls(m) => m,
        }
    }

    /// `x` explained as a mosaic of training patches at `t = 0`.
    fn mosaic(&self, x: &Image<f32>, class: Option<usize>) -> Result<Mosaic, Error> {
        match self {
            Generator::Ideal(m) => m.mosaic(x, 0.0, class),
            Generator::Local(m) => m.mosaic(x, 0.0, class),
            Generator::Els(m) => m.mosaic(x, 0.0, class),
            Generator::BbEls(m) => m.mosaic(x, 0.0, class),
        }
    }
}

fn parse_rows(text: &str) -> Result<Range<usize>, String> {
    let (a, b) = text
        .split_once("..")
        .ok_or_else(|| format!("--rows expects A..B, got {text:?}"))?;
    let start = a.parse().map_err(|_| format!("--rows: bad start {a:?}"))?;
    let end = b.parse().map_err(|_| format!("--rows: bad end {b:?}"))?;
    if end <= start {
        return Err(format!("--rows {text} is empty"));
    }
    Ok(start..end)
}

fn parse_number<N: std::str::FromStr>(flag: &str, text: &str) -> Result<N, String> {
    text.parse()
        .map_err(|_| format!("{flag} expects a number, got {text:?}"))
}

/// An argument as text, or an error naming it.
fn utf8<'a>(what: &str, arg: &'a OsStr) -> Result<&'a str, String> {
    arg.to_str()
        .ok_or_else(|| format!("{what} {:?} is not valid UTF-8", arg.to_string_lossy()))
}

/// The options that take a value.
const OPTIONS: &[&str] = &[
    "--class",
    "--copy-below",
    "--k",
    "--machine",
    "--mnist",
    "--out",
    "--rows",
    "--sampler",
    "--samples",
    "--scales",
    "--seed",
    "--steps",
];

fn parse(args: &[OsString]) -> Result<Option<Options>, String> {
    let mut options = Options {
        mnist: None,
        rows: 0..5000,
        machine: "bbels".into(),
        scales: None,
        k: None,
        steps: 20,
        sampler: "ddim".into(),
        seed: 0,
        samples: 16,
        class: None,
        copy_below: 0.1,
        out: PathBuf::from("generated.png"),
        explain: false,
    };
    let mut args = args.iter();
    while let Some(flag) = args.next() {
        let flag = utf8("option", flag)?;
        if flag == "--help" || flag == "-h" {
            return Ok(None);
        }
        if flag == "--explain" {
            options.explain = true;
            continue;
        }
        if !OPTIONS.contains(&flag) {
            return Err(format!("unknown option {flag} (see --help)"));
        }
        let raw = args
            .next()
            .ok_or_else(|| format!("{flag} needs a value (see --help)"))?;
        // Paths may be any bytes; every other value must be text.
        match flag {
            "--mnist" => {
                options.mnist = Some(PathBuf::from(raw));
                continue;
            }
            "--out" => {
                options.out = PathBuf::from(raw);
                continue;
            }
            _ => {}
        }
        let value = utf8(&format!("the value of {flag}"), raw)?;
        match flag {
            "--rows" => options.rows = parse_rows(value)?,
            "--machine" => options.machine = value.to_string(),
            "--scales" => {
                let sides = value
                    .split(',')
                    .map(|s| parse_number("--scales", s.trim()))
                    .collect::<Result<Vec<usize>, String>>()?;
                options.scales = Some(sides);
            }
            "--k" => options.k = Some(parse_number("--k", value)?),
            "--steps" => options.steps = parse_number("--steps", value)?,
            "--sampler" => options.sampler = value.to_string(),
            "--seed" => options.seed = parse_number("--seed", value)?,
            "--samples" => options.samples = parse_number("--samples", value)?,
            "--class" => options.class = Some(parse_number("--class", value)?),
            "--copy-below" => options.copy_below = parse_number("--copy-below", value)?,
            other => return Err(format!("unknown option {other} (see --help)")),
        }
    }
    if !(1..=MAX_SAMPLES).contains(&options.samples) {
        return Err(format!(
            "--samples must be between 1 and {MAX_SAMPLES}, got {}",
            options.samples
        ));
    }
    if !(1..=MAX_STEPS).contains(&options.steps) {
        return Err(format!(
            "--steps must be between 1 and {MAX_STEPS}, got {}",
            options.steps
        ));
    }
    if !(options.copy_below.is_finite() && options.copy_below >= 0.0) {
        return Err(format!(
            "--copy-below must be a finite distance of at least 0, got {}",
            options.copy_below
        ));
    }
    if options.scales.is_some() && options.k.is_some() {
        return Err("give either --scales or --k, not both".into());
    }
    Ok(Some(options))
}

/// The layout of the output grid for images of `shape`.
fn grid_options(shape: Shape) -> GridOptions {
    GridOptions {
        columns: Some(GRID_COLUMNS),
        scale: if shape.height <= 16 { 6 } else { 3 },
        padding: 2,
        ..GridOptions::default()
    }
}

/// Checks, before sampling, that a grid of `images` images of `shape`
/// stays within the PNG writer's limits.
fn check_grid_size(shape: Shape, images: usize, options: &GridOptions) -> Result<(), String> {
    let columns = options.columns.unwrap_or(GRID_COLUMNS) as u128;
    let rows = images.div_ceil(columns as usize) as u128;
    let (scale, padding) = (options.scale as u128, options.padding as u128);
    let width = columns * shape.width as u128 * scale + (columns + 1) * padding;
    let height = rows * shape.height as u128 * scale + (rows + 1) * padding;
    let bytes = width * height * shape.channels as u128;
    let side = MAX_GRID_SIDE as u128;
    if width > side || height > side || bytes > MAX_GRID_BYTES as u128 {
        return Err(format!(
            "the output grid of {images} images would be {width}x{height} pixels, \
             above the PNG limit of {MAX_GRID_BYTES} bytes; draw fewer --samples"
        ));
    }
    Ok(())
}

/// The 1,797 UCI digits from `smartcore`: 64 values in 0..16 per row,
/// mapped to [-1, 1] as `v / 16 * 2 - 1`.
fn embedded_digits() -> Result<TrainingSet<f32>, Error> {
    let dataset = smartcore::dataset::digits::load_dataset();
    let shape = Shape::new(1, 8, 8)?;
    let data = dataset.data.iter().map(|&v| v / 16.0 * 2.0 - 1.0).collect();
    let labels = dataset.target.iter().map(|&c| c as usize).collect();
    TrainingSet::new(shape, data, Some(labels))
}

fn sampler_method(name: &str, seed: u64) -> Result<Method, String> {
    match name {
        "ddim" => Ok(Method::Ddim),
        "ddpm" => Ok(Method::Ddpm { seed }),
        "euler" => Ok(Method::Euler),
        "heun" => Ok(Method::Heun),
        other => Err(format!(
            "unknown sampler {other:?} (ddim, ddpm, euler or heun)"
        )),
    }
}

fn run(options: Options) -> Result<(), String> {
    check_output(&options.out)?;
    let training: TrainingSet<f32> = match &options.mnist {
        Some(dir) => idx::read_mnist_rows(dir, options.rows.clone()).map_err(|e| e.to_string())?,
        None => embedded_digits().map_err(|e| e.to_string())?,
    };
    let shape = training.shape();
    if let Some(class) = options.class {
        training.class(class).map_err(|e| e.to_string())?;
    }
    let grid_options = grid_options(shape);
    check_grid_size(shape, 2 * options.samples, &grid_options)?;

    let scales = match (&options.scales, options.k) {
        (Some(sides), _) => sides.clone(),
        (None, Some(k)) => vec![k; options.steps],
        (None, None) => {
            let base: &[usize] = if shape.height.max(shape.width) >= 24 {
                &SCALES_28
            } else {
                &SCALES_8
            };
            if options.steps == base.len() {
                base.to_vec()
            } else {
                // Stretch the default over another number of steps.
                (0..options.steps)
                    .map(|j| base[j * base.len() / options.steps])
                    .collect()
            }
        }
    };
    if scales.len() != options.steps {
        return Err(format!(
            "the scale schedule has {} entries but there are {} steps",
            scales.len(),
            options.steps
        ));
    }
    let locality = ScaleSchedule::new(scales.clone()).map_err(|e| e.to_string())?;
    let method = sampler_method(&options.sampler, options.seed)?;
    let sampler = Sampler::new(method, options.steps).map_err(|e| e.to_string())?;

    let generator = match options.machine.as_str() {
        "is" => Generator::Ideal(
            Machine::ideal(training.clone(), LegacyCosine).map_err(|e| e.to_string())?,
        ),
        "ls" => Generator::Local(
            Machine::local(training.clone(), LegacyCosine, locality).map_err(|e| e.to_string())?,
        ),
        "els" => Generator::Els(
            Machine::equivariant_local(training.clone(), LegacyCosine, locality)
                .map_err(|e| e.to_string())?,
        ),
        "bbels" => Generator::BbEls(
            Machine::equivariant_local_zero_padded(training.clone(), LegacyCosine, locality)
                .map_err(|e| e.to_string())?,
        ),
        other => return Err(format!("unknown machine {other:?} (is, ls, els or bbels)")),
    };
    let score = generator.score();

    let source = match &options.mnist {
        Some(dir) => format!(
            "{} rows {}..{}",
            dir.display(),
            options.rows.start,
            options.rows.end
        ),
        None => "embedded UCI digits".to_string(),
    };
    say!(
        "{} training images {shape} from {source}; machine {}, {} {} steps, {}",
        training.len(),
        options.machine,
        options.steps,
        options.sampler,
        if options.machine == "is" {
            "whole-image distances".to_string()
        } else {
            format!("scales {scales:?}")
        },
    );

    let total = (options.samples as u64).saturating_mul(options.steps as u64);
    let bar = ProgressBar::new(total);
    bar.set_style(
        ProgressStyle::with_template("{bar:40} {pos}/{len} steps, {elapsed} elapsed, eta {eta}")
            .expect("valid template"),
    );
    let started = Instant::now();
    let mut samples = Vec::with_capacity(options.samples);
    for index in 0..options.samples {
        let seed = options.seed.wrapping_add(index as u64);
        let noise = initial_noise::<f32>(shape, seed);
        // DDPM draws fresh noise at every step: give each sample its own
        // stream, distinct from the one of its initial noise.
        let sampler = match sampler.method() {
            Method::Ddpm { .. } => Sampler::new(
                Method::Ddpm {
                    seed: seed ^ 0x9e37_79b9_7f4a_7c15,
                },
                options.steps,
            )
            .map_err(|e| e.to_string())?,
            _ => sampler,
        };
        let mut tick = |_: &StepRecord<'_, f32>| bar.inc(1);
        let sample = sampler
            .sample(score, noise, options.class, &mut tick)
            .map_err(|e| e.to_string())?;
        samples.push(sample);
    }
    bar.finish_and_clear();
    say!("sampled in {:.1} s", started.elapsed().as_secs_f64());

    let mut grid = Vec::with_capacity(2 * samples.len());
    let mut copies = 0;
    say!("sample  nearest row  L2 distance  RMS pixel distance");
    for (index, sample) in samples.iter().enumerate() {
        let (row, squared) = training.nearest(sample).map_err(|e| e.to_string())?;
        let rms = (squared / shape.len() as f64).sqrt();
        let verdict = if rms < options.copy_below {
            copies += 1;
            "copy"
        } else {
            "novel"
        };
        say!(
            "{index:>6}  {row:>11}  {:>11.4}  {rms:>18.4}  {verdict}",
            squared.sqrt()
        );
        grid.push(sample.clone());
        grid.push(training.to_image(row));
    }
    say!(
        "copies: {copies} of {} (RMS distance to the nearest training image below {}); novel: {}",
        samples.len(),
        options.copy_below,
        samples.len() - copies
    );

    if options.explain {
        let started = Instant::now();
        say!("sample  unique tiles  from images  largest share: image (pixels)");
        for (index, sample) in samples.iter().enumerate() {
            let mosaic = generator
                .mosaic(sample, options.class)
                .map_err(|e| e.to_string())?;
            // Tiles whose nearest distance several patches share (blank
            // windows, say) are not counted as sources.
            let sources = mosaic.sources();
            let unique: usize = sources.iter().map(|(_, pixels)| pixels).sum();
            let largest = sources.first().map_or("-".to_string(), |(image, pixels)| {
                format!("{image} ({pixels})")
            });
            say!(
                "{index:>6}  {:>12}  {:>11}  {largest:>30}",
                format!("{unique} of {}", shape.positions()),
                sources.len(),
            );
        }
        say!(
            "explained in {:.1} s (a copy of one training image takes all its unique tiles from it)",
            started.elapsed().as_secs_f64()
        );
    }

    write_grid(&options.out, &grid, &grid_options).map_err(|e| e.to_string())?;
    say!(
        "wrote {} (pairs: sample, then its nearest training image)",
        options.out.display()
    );
    Ok(())
}

fn main() -> ExitCode {
    let args: Vec<OsString> = std::env::args_os().skip(1).collect();
    let options = match parse(&args) {
        Ok(Some(options)) => options,
        Ok(None) => {
            say!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Err(message) => {
            eprintln!("error: {message}");
            return ExitCode::from(2);
        }
    };
    match run(options) {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("error: {message}");
            ExitCode::from(2)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(list: &[&str]) -> Vec<OsString> {
        list.iter().map(OsString::from).collect()
    }

    fn refusal(list: &[&str]) -> String {
        match parse(&args(list)) {
            Err(message) => message,
            Ok(options) => panic!("{list:?} was accepted: {options:?}"),
        }
    }

    /// A fresh empty folder for one test.
    fn scratch(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "score-machines-generate-{}-{name}",
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn defaults_parse() {
        let options = parse(&[]).unwrap().unwrap();
        assert_eq!((options.samples, options.steps), (16, 20));
        assert_eq!(options.copy_below, 0.1);
        assert!(parse(&args(&["--help"])).unwrap().is_none());
    }

    #[test]
    fn counts_are_capped() {
        for (flag, max) in [("--samples", MAX_SAMPLES), ("--steps", MAX_STEPS)] {
            let over = (max + 1).to_string();
            assert!(refusal(&[flag, &over]).contains(&over));
            assert!(refusal(&[flag, "0"]).contains(flag));
            assert!(refusal(&[flag, "18446744073709551615"]).contains(flag));
            assert!(refusal(&[flag, "18446744073709551616"]).contains(flag));
            assert!(parse(&args(&[flag, &max.to_string()])).unwrap().is_some());
        }
    }

    #[test]
    fn copy_below_must_be_finite_and_non_negative() {
        for bad in ["nan", "NaN", "inf", "-inf", "-1", "-0.5"] {
            assert!(
                refusal(&["--copy-below", bad]).contains("--copy-below"),
                "{bad}"
            );
        }
        let zero = parse(&args(&["--copy-below", "0"])).unwrap().unwrap();
        assert_eq!(zero.copy_below, 0.0);
    }

    #[cfg(unix)]
    #[test]
    fn non_utf8_arguments_are_refused_but_paths_may_be_any_bytes() {
        use std::os::unix::ffi::OsStrExt;
        let bad = OsStr::from_bytes(b"caf\xe9").to_os_string();
        let message = parse(std::slice::from_ref(&bad)).unwrap_err();
        assert!(message.contains("not valid UTF-8"), "{message}");
        let message = parse(&[OsString::from("--steps"), bad.clone()]).unwrap_err();
        assert!(message.contains("--steps"), "{message}");
        let options = parse(&[OsString::from("--out"), bad.clone()])
            .unwrap()
            .unwrap();
        assert_eq!(options.out.as_os_str(), bad.as_os_str());
    }

    #[test]
    fn output_is_checked_before_any_work() {
        let dir = scratch("out");
        let missing = dir.join("missing").join("grid.png");
        let message = check_output(&missing).unwrap_err();
        assert!(message.contains("does not exist"), "{message}");
        let message = check_output(&dir).unwrap_err();
        assert!(message.contains("not a regular file"), "{message}");
        // A new file can be created, and the check leaves nothing behind.
        let fresh = dir.join("grid.png");
        check_output(&fresh).unwrap();
        assert!(!fresh.exists());
        // An existing file is kept as it is.
        std::fs::write(&fresh, b"old").unwrap();
        check_output(&fresh).unwrap();
        assert_eq!(std::fs::read(&fresh).unwrap(), b"old");
        std::fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn oversized_grids_are_refused_before_sampling() {
        let mnist = Shape::new(1, 28, 28).unwrap();
        let options = grid_options(mnist);
        assert!(check_grid_size(mnist, 2 * 16, &options).is_ok());
        let message = check_grid_size(mnist, 2 * MAX_SAMPLES, &options).unwrap_err();
        assert!(message.contains("--samples"), "{message}");
        let digits = Shape::new(1, 8, 8).unwrap();
        assert!(check_grid_size(digits, 2 * MAX_SAMPLES, &grid_options(digits)).is_ok());
    }
}
