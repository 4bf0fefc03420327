//! A hostile guest for hosepipe's sandbox tests, written against the raw batch contract.
//!
//! Per record, by its data: `loop` spins forever, `alloc` grows memory without bound, `trap`
//! panics (an `unreachable` trap), `stderr` writes to stderr, `env` returns the number of
//! environment variables, `fs` tries to read `/etc/passwd` and returns what happened; anything
//! else passes through. With the init parameter `WrongLength=true`, every batch's answer is one
//! output short. Only meaningful as a wasm32 component.

#[cfg(target_arch = "wasm32")]
mod guest {
    use hosepipe_transform::guest::{Batch, Guest, Parameter, Processed, Source, Status, export};
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

        fn process(batch: Batch) -> Processed {
            let mut out = Processed {
                data: Vec::new(),
                ids: Vec::new(),
                statuses: Vec::new(),
                sources: Vec::new(),
                offsets: Vec::new(),
                lengths: Vec::new(),
                partition_keys: Vec::new(),
            };
            let mut start = 0usize;
            for (i, id) in batch.ids.iter().enumerate() {
                let len = batch.lengths[i] as usize;
                let bytes = &batch.data[start..start + len];
                start += len;
                let answer: Vec<u8> = match bytes {
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
                    b"trap" => panic!("poison record {id}"),
                    b"stderr" => {
                        eprintln!("hello from the guest");
                        bytes.to_vec()
                    }
                    b"env" => std::env::vars().count().to_string().into_bytes(),
                    b"fs" => match std::fs::read("/etc/passwd") {
                        Ok(_) => b"read".to_vec(),
                        Err(e) => format!("denied: {e}").into_bytes(),
                    },
                    other => other.to_vec(),
                };
                out.ids.push(*id);
                out.statuses.push(Status::Ok);
                out.sources.push(Source::Output);
                out.offsets.push(out.data.len() as u32);
                out.lengths.push(answer.len() as u32);
                out.data.extend_from_slice(&answer);
            }
            if WRONG_LENGTH.load(Ordering::Relaxed) {
                for column in [&mut out.offsets, &mut out.lengths] {
                    column.pop();
                }
                out.ids.pop();
                out.statuses.pop();
                out.sources.pop();
            }
            out
        }
    }

    export!(Hostile with_types_in hosepipe_transform::guest);
}
