//! A hostile guest for hosepipe's sandbox tests, written against the raw batch contract.
//!
//! Per record, by its data: `loop` spins forever, `alloc` grows memory without bound, `trap`
//! panics (an `unreachable` trap), `stderr` writes to stderr, `env` returns the number of
//! environment variables, `fs` tries to read `/etc/passwd` and returns what happened; anything
//! else passes through. With the init parameter `WrongLength=true`, every batch's answer is one
//! output short. Only meaningful as a wasm32 component.

#[cfg(target_arch = "wasm32")]
mod guest {
    use hosepipe_transform::guest::{
        Guest, Input, Output, Parameter, Transformed, WitOutcome, export,
    };
    use std::sync::atomic::{AtomicBool, Ordering};

    static WRONG_LENGTH: AtomicBool = AtomicBool::new(false);

    struct Hostile;

    impl Guest for Hostile {
        fn init(parameters: Vec<Parameter>) -> Result<(), String> {
            for p in parameters {
                match (p.name.as_str(), p.value.as_str()) {
                    ("WrongLength", v) => WRONG_LENGTH.store(v == "true", Ordering::Relaxed),
                    ("Reject", v) => return Err(format!("rejected: {v}")),
                    _ => {}
                }
            }
            Ok(())
        }

        fn process(batch: Vec<Input>) -> Vec<Output> {
            let mut out: Vec<Output> = batch.into_iter().map(one).collect();
            if WRONG_LENGTH.load(Ordering::Relaxed) {
                out.pop();
            }
            out
        }
    }

    fn ok(data: Vec<u8>) -> WitOutcome {
        WitOutcome::Ok(Transformed {
            data,
            partition_keys: Vec::new(),
        })
    }

    fn one(input: Input) -> Output {
        let outcome = match input.data.as_slice() {
            b"loop" => {
                let mut n = 0u64;
                loop {
                    n = std::hint::black_box(n.wrapping_add(1));
                }
            }
            b"alloc" => {
                let mut hoard: Vec<Vec<u8>> = Vec::new();
                loop {
                    hoard.push(vec![1u8; 16 << 20]);
                    std::hint::black_box(&hoard);
                }
            }
            b"trap" => panic!("poison record {}", input.id),
            b"stderr" => {
                eprintln!("hello from the guest");
                ok(input.data)
            }
            b"env" => ok(std::env::vars().count().to_string().into_bytes()),
            b"fs" => ok(match std::fs::read("/etc/passwd") {
                Ok(_) => b"read".to_vec(),
                Err(e) => format!("denied: {e}").into_bytes(),
            }),
            _ => ok(input.data),
        };
        Output {
            id: input.id,
            outcome,
        }
    }

    export!(Hostile with_types_in hosepipe_transform::guest);
}
