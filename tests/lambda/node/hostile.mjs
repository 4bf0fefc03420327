// Hostile handlers: one never returns, one allocates without end.
export function spin() {
    for (;;) { /* never returns */ }
}

export function hoard() {
    const kept = [];
    for (;;) kept.push(new Uint8Array(16 * 1024 * 1024).fill(1));
}
