//! Evaluates a score machine on a batch of noisy images stored as `.npy`.
//!
//! ```text
//! cargo run --release --example score -- --machine els --k 5 --t 0.5 \
//!     --train train.npy --input x.npy --out out.npy
//! ```
//!
//! Arrays are `float32` in C order: the training images `[N, C, H, W]`, the
//! noisy inputs `[B, C, H, W]`; the output has the input's shape. Any bad
//! file, type, shape or option prints one line `error: ...` on stderr and
//! exits with code 2; success prints one line naming the file written and
//! its shape. Run with `--help` for every option.

#[macro_use]
mod common;

use std::path::PathBuf;
use std::process::ExitCode;

use score_machines::io::npy;
use score_machines::prelude::*;

const USAGE: &str = "\
Evaluates a score machine on a batch of noisy images.

usage: score --machine MACHINE [--k K] --t T --train TRAIN.npy --input X.npy --out OUT.npy
             [--output score|x0|eps] [--schedule SCHEDULE] [--class C --labels LABELS.npy]

  --machine   is (ideal), es (equivariant), ls (local), els (equivariant local,
              reference periodic boundary), els-periodic (fully periodic),
              bbels (equivariant local, zero padding)
  --k         odd patch side; required by ls, els, els-periodic and bbels,
              ignored by is and es
  --t         time in [0, 1]; the score and eps need s(t) > 0, so t = 0 (no
              noise) works only with --output x0
  --train     training images, float32 [N, C, H, W]
  --input     noisy images, float32 [B, C, H, W] with the training C, H, W
  --out       output file, float32 with the input's shape
  --output    score (default), x0 (posterior mean) or eps (noise estimate)
  --schedule  legacy-cosine (default), cosine, linear, exponential or
              variance-exploding (sigma from 0.01 to 50), each with its defaults
  --class     condition on this class label (needs --labels)
  --labels    one integer label per training image, 1-d .npy
  --help      print this message

Errors print one line `error: ...` on stderr and exit with code 2.";

/// The machines of the theory.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Kind {
    Ideal,
    Equivariant,
    Local,
    EquivariantLocal,
    EquivariantLocalPeriodic,
    ZeroPadded,
}

/// Parsed command line.
#[derive(Debug)]
struct Options {
    machine: Kind,
    patch: Option<usize>,
    t: f64,
    train: PathBuf,
    input: PathBuf,
    out: PathBuf,
    output: Prediction,
    schedule: String,
    class: Option<usize>,
    labels: Option<PathBuf>,
}

fn main() -> ExitCode {
    let mut args = Vec::new();
    for arg in std::env::args_os().skip(1) {
        match arg.into_string() {
            Ok(arg) => args.push(arg),
            Err(arg) => return fail(&format!("argument {arg:?} is not valid UTF-8")),
        }
    }
    if args.iter().any(|a| a == "--help" || a == "-h") {
        say!("{USAGE}");
        return ExitCode::SUCCESS;
    }
    match parse(&args).and_then(|options| run(&options)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => fail(&message),
    }
}

/// Prints one error line and gives exit code 2.
fn fail(message: &str) -> ExitCode {
    eprintln!("error: {}", message.replace('\n', " "));
    ExitCode::from(2)
}

fn parse(args: &[String]) -> Result<Options, String> {
    let mut values: Vec<(&str, String)> = Vec::new();
    let mut rest = args.iter();
    while let Some(arg) = rest.next() {
        let (name, inline) = match arg.split_once('=') {
            Some((name, value)) if name.starts_with("--") => (name, Some(value.to_string())),
            _ => (arg.as_str(), None),
        };
        const NAMES: [&str; 10] = [
            "--machine",
            "--k",
            "--t",
            "--train",
            "--input",
            "--out",
            "--output",
            "--schedule",
            "--class",
            "--labels",
        ];
        let Some(&name) = NAMES.iter().find(|&&n| n == name) else {
            return Err(format!("unknown option {arg:?} (see --help)"));
        };
        if values.iter().any(|(n, _)| *n == name) {
            return Err(format!("{name} given twice"));
        }
        let value = match inline {
            Some(value) => value,
            None => rest
                .next()
                .cloned()
                .ok_or_else(|| format!("{name} needs a value"))?,
        };
        values.push((name, value));
    }
    let get = |name: &str| {
        values
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.as_str())
    };
    let required = |name: &str| get(name).ok_or_else(|| format!("{name} is required (see --help)"));

    let machine = match required("--machine")? {
        "is" => Kind::Ideal,
        "es" => Kind::Equivariant,
        "ls" => Kind::Local,
        "els" => Kind::EquivariantLocal,
        "els-periodic" => Kind::EquivariantLocalPeriodic,
        "bbels" => Kind::ZeroPadded,
        other => {
            return Err(format!(
                "unknown machine {other:?}: expected is, es, ls, els, els-periodic or bbels"
            ));
        }
    };
    let patch = match (get("--k"), machine) {
        (_, Kind::Ideal | Kind::Equivariant) => None,
        (None, _) => return Err("--k is required by ls, els, els-periodic and bbels".into()),
        (Some(k), _) => Some(
            k.parse::<usize>()
                .map_err(|_| format!("--k must be a positive odd integer, got {k:?}"))?,
        ),
    };
    let t_text = required("--t")?;
    let t: f64 = t_text
        .parse()
        .map_err(|_| format!("--t must be a number, got {t_text:?}"))?;
    if !(0.0..=1.0).contains(&t) {
        return Err(format!("--t must lie in [0, 1], got {t_text}"));
    }
    let output = match get("--output").unwrap_or("score") {
        "score" => Prediction::Score,
        "x0" => Prediction::CleanImage,
        "eps" => Prediction::Noise,
        other => {
            return Err(format!(
                "unknown --output {other:?}: expected score, x0 or eps"
            ));
        }
    };
    let schedule = get("--schedule").unwrap_or("legacy-cosine").to_string();
    schedule_named(&schedule)?;
    let class = get("--class")
        .map(|c| {
            c.parse::<usize>()
                .map_err(|_| format!("--class must be a non-negative integer, got {c:?}"))
        })
        .transpose()?;
    let labels = get("--labels").map(PathBuf::from);
    if class.is_some() && labels.is_none() {
        return Err("--class needs --labels".into());
    }
    Ok(Options {
        machine,
        patch,
        t,
        train: PathBuf::from(required("--train")?),
        input: PathBuf::from(required("--input")?),
        out: PathBuf::from(required("--out")?),
        output,
        schedule,
        class,
        labels,
    })
}

fn schedule_named(name: &str) -> Result<Box<dyn NoiseSchedule>, String> {
    Ok(match name {
        "legacy-cosine" => Box::new(LegacyCosine),
        "cosine" => Box::new(Cosine::default()),
        "linear" => Box::new(LinearBeta::default()),
        "exponential" => Box::new(Exponential::default()),
        "variance-exploding" => Box::new(VarianceExploding::default()),
        other => {
            return Err(format!(
                "unknown schedule {other:?}: expected legacy-cosine, cosine, linear, exponential \
                 or variance-exploding"
            ));
        }
    })
}

/// Checks that a file holds a 4-d `float32` array and returns its shape.
fn float32_batch(path: &PathBuf, role: &str) -> Result<Vec<usize>, String> {
    let info = npy::read_info(path).map_err(|e| e.to_string())?;
    if !info.is_float32() {
        return Err(format!(
            "{}: {role} must be float32, found dtype {}",
            path.display(),
            info.dtype
        ));
    }
    if info.shape.len() != 4 {
        return Err(format!(
            "{}: {role} must be a 4-d array [N, C, H, W], found shape {:?}",
            path.display(),
            info.shape
        ));
    }
    Ok(info.shape)
}

fn run(options: &Options) -> Result<(), String> {
    let text = |e: Error| e.to_string();
    if let Some(folder) = options.out.parent()
        && !folder.as_os_str().is_empty()
        && !folder.is_dir()
    {
        return Err(format!(
            "{}: the output folder {} does not exist",
            options.out.display(),
            folder.display()
        ));
    }
    float32_batch(&options.train, "the training set")?;
    let mut training = npy::read_training_set::<f32>(&options.train).map_err(text)?;
    if let Some(path) = &options.labels {
        let labels = npy::read_labels(path).map_err(text)?;
        if labels.len() != training.len() {
            return Err(format!(
                "{}: {} labels for {} training images",
                path.display(),
                labels.len(),
                training.len()
            ));
        }
        training = TrainingSet::new(training.shape(), training.as_slice().to_vec(), Some(labels))
            .map_err(text)?;
    }
    let shape = training.shape();
    let input_shape = float32_batch(&options.input, "the input")?;
    if input_shape[1..] != [shape.channels, shape.height, shape.width] {
        return Err(format!(
            "{}: input images are {}x{}x{}, training images {shape}",
            options.input.display(),
            input_shape[1],
            input_shape[2],
            input_shape[3]
        ));
    }
    let (_, input) = npy::read_array::<f32>(&options.input).map_err(text)?;

    let schedule = schedule_named(&options.schedule)?;
    let machine = build(options, training, schedule).map_err(text)?;
    let mut output = Vec::with_capacity(input.len());
    let mut out = Image::zeros(shape);
    for x in input.chunks_exact(shape.len()) {
        let x = Image::from_slice(shape, x).map_err(text)?;
        machine
            .predict_into(&x, options.t, options.class, options.output, &mut out)
            .map_err(text)?;
        output.extend_from_slice(out.as_slice());
    }
    npy::write_array(&options.out, &input_shape, &output).map_err(text)?;
    let what = match options.output {
        Prediction::Score => "score",
        Prediction::CleanImage => "x0",
        Prediction::Noise => "eps",
    };
    say!(
        "wrote {}: {what} of {} images, float32 {input_shape:?}",
        options.out.display(),
        input_shape[0]
    );
    Ok(())
}

fn build(
    options: &Options,
    training: TrainingSet<f32>,
    schedule: Box<dyn NoiseSchedule>,
) -> Result<Box<dyn ScoreFunction<f32>>, Error> {
    let patch = || SquarePatch::new(options.patch.unwrap_or(0));
    Ok(match options.machine {
        Kind::Ideal => Box::new(Machine::ideal(training, schedule)?),
        Kind::Equivariant => Box::new(Machine::equivariant(training, schedule)?),
        Kind::Local => Box::new(Machine::local(training, schedule, patch()?)?),
        Kind::EquivariantLocal => {
            Box::new(Machine::equivariant_local(training, schedule, patch()?)?)
        }
        Kind::EquivariantLocalPeriodic => Box::new(Machine::equivariant_local_periodic(
            training,
            schedule,
            patch()?,
        )?),
        Kind::ZeroPadded => Box::new(Machine::equivariant_local_zero_padded(
            training,
            schedule,
            patch()?,
        )?),
    })
}
