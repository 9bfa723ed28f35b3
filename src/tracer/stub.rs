//! The restorer stub: a few dozen instructions, assembled at run time for the exact address
//! they will run at, that execute a table of system calls inside the process being
//! restored (unmap the old world, move the vDSO, map and fill every region, ...) and stop
//! on `int3`. One pass, no ptrace round trip per page.

use iced_x86::code_asm::*;
use iced_x86::{BlockEncoderOptions, IcedError};

/// How the stub judges one syscall's result.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expect {
    /// Any value outside `-4095..0`.
    Success,
    /// Exactly this value (`mmap` at a fixed address, a full `pread`).
    Value(u64),
    /// Not checked (best-effort advice).
    Anything,
}

/// One entry of the table: syscall number, six arguments, check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Op {
    pub nr: i64,
    pub args: [u64; 6],
    pub expect: Expect,
    /// What the op does, for the error message if it fails.
    pub what: String,
}

impl Op {
    pub fn new(nr: i64, args: &[u64], expect: Expect, what: impl Into<String>) -> Op {
        let mut all = [0u64; 6];
        all[..args.len()].copy_from_slice(args);
        Op {
            nr,
            args: all,
            expect,
            what: what.into(),
        }
    }
}

/// Bytes per table entry: nr, 6 args, mode, expected value.
pub const OP_BYTES: usize = 9 * 8;

const MODE_SUCCESS: u64 = 0;
const MODE_VALUE: u64 = 1;
const MODE_ANY: u64 = 2;

/// Serialises ops into the table layout the stub reads.
pub fn encode_table(ops: &[Op]) -> Vec<u8> {
    let mut out = Vec::with_capacity(ops.len() * OP_BYTES);
    for op in ops {
        let (mode, value) = match op.expect {
            Expect::Success => (MODE_SUCCESS, 0),
            Expect::Value(v) => (MODE_VALUE, v),
            Expect::Anything => (MODE_ANY, 0),
        };
        let words = [op.nr as u64]
            .into_iter()
            .chain(op.args)
            .chain([mode, value]);
        for w in words {
            out.extend_from_slice(&w.to_le_bytes());
        }
    }
    out
}

/// Assembled stub and the addresses the restorer needs to recognise where it stopped.
#[derive(Debug, Clone)]
pub struct Stub {
    pub code: Vec<u8>,
    pub entry: u64,
    /// Entry for a caller that sets the table address in `rbx` and the op count in `r12`
    /// itself: several threads can run one copy of the code, each on its own table.
    pub table_entry: u64,
    /// `rip` after the `int3` that ends a successful run.
    pub done_rip: u64,
    /// `rip` after the `int3` that reports a failed op (index in r13, result in rax).
    pub fail_rip: u64,
    /// A `syscall` instruction the restorer can point a thread at.
    pub syscall_gadget: u64,
}

/// Assembles the stub to run at `base`, reading `op_count` ops from `table`. The result of
/// an op whose result is not checked is stored in its table entry, in place of the
/// expected value.
pub fn assemble(base: u64, table: u64, op_count: u64) -> Result<Stub, IcedError> {
    let mut a = CodeAssembler::new(64)?;
    let mut table_entry = a.create_label();
    let mut top = a.create_label();
    let mut check_success = a.create_label();
    let mut check_value = a.create_label();
    let mut next = a.create_label();
    let mut done = a.create_label();
    let mut fail = a.create_label();
    let mut gadget = a.create_label();

    a.mov(rbx, table)?;
    a.mov(r12, op_count)?;
    a.set_label(&mut table_entry)?;
    a.xor(r13, r13)?;
    a.set_label(&mut top)?;
    a.cmp(r13, r12)?;
    a.jae(done)?;
    a.mov(rax, qword_ptr(rbx))?;
    a.mov(rdi, qword_ptr(rbx + 8))?;
    a.mov(rsi, qword_ptr(rbx + 16))?;
    a.mov(rdx, qword_ptr(rbx + 24))?;
    a.mov(r10, qword_ptr(rbx + 32))?;
    a.mov(r8, qword_ptr(rbx + 40))?;
    a.mov(r9, qword_ptr(rbx + 48))?;
    a.syscall()?;
    // rcx and r11 are clobbered by `syscall`; the mode is reloaded after it.
    a.mov(rcx, qword_ptr(rbx + 56))?;
    a.cmp(rcx, MODE_VALUE as i32)?;
    a.je(check_value)?;
    a.cmp(rcx, MODE_ANY as i32)?;
    a.jne(check_success)?;
    a.mov(qword_ptr(rbx + 64), rax)?;
    a.jmp(next)?;
    // Success mode: results in [-4095, -1] are errors (unsigned compare).
    a.set_label(&mut check_success)?;
    a.cmp(rax, -4095)?;
    a.jae(fail)?;
    a.jmp(next)?;
    a.set_label(&mut check_value)?;
    a.cmp(rax, qword_ptr(rbx + 64))?;
    a.jne(fail)?;
    a.set_label(&mut next)?;
    a.add(rbx, OP_BYTES as i32)?;
    a.inc(r13)?;
    a.jmp(top)?;
    a.set_label(&mut done)?;
    a.int3()?;
    a.set_label(&mut fail)?;
    a.int3()?;
    a.set_label(&mut gadget)?;
    a.syscall()?;
    a.int3()?;

    let result = a.assemble_options(base, BlockEncoderOptions::RETURN_NEW_INSTRUCTION_OFFSETS)?;
    Ok(Stub {
        code: result.inner.code_buffer.clone(),
        entry: base,
        table_entry: result.label_ip(&table_entry)?,
        done_rip: result.label_ip(&done)? + 1,
        fail_rip: result.label_ip(&fail)? + 1,
        syscall_gadget: result.label_ip(&gadget)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use iced_x86::{Decoder, DecoderOptions, Formatter, IntelFormatter};

    fn disassemble(code: &[u8], ip: u64) -> Vec<String> {
        let mut decoder = Decoder::with_ip(64, code, ip, DecoderOptions::NONE);
        let mut fmt = IntelFormatter::new();
        let mut lines = Vec::new();
        for insn in decoder.iter() {
            let mut text = String::new();
            fmt.format(&insn, &mut text);
            lines.push(text);
        }
        lines
    }

    /// The stub as a reviewer reads it.
    #[test]
    fn golden_disassembly() {
        let stub = assemble(0x7000_0000, 0x7000_1000, 3).unwrap();
        let text = disassemble(&stub.code, stub.entry).join("\n");
        let expected = "\
mov rbx,70001000h
mov r12,3
xor r13,r13
cmp r13,r12
jae short 0000000070000068h
mov rax,[rbx]
mov rdi,[rbx+8]
mov rsi,[rbx+10h]
mov rdx,[rbx+18h]
mov r10,[rbx+20h]
mov r8,[rbx+28h]
mov r9,[rbx+30h]
syscall
mov rcx,[rbx+38h]
cmp rcx,1
je short 0000000070000059h
cmp rcx,2
jne short 000000007000004Fh
mov [rbx+40h],rax
jmp short 000000007000005Fh
cmp rax,0FFFFFFFFFFFFF001h
jae short 0000000070000069h
jmp short 000000007000005Fh
cmp rax,[rbx+40h]
jne short 0000000070000069h
add rbx,48h
inc r13
jmp short 0000000070000017h
int3
int3
syscall
int3";
        assert_eq!(text, expected, "\n{text}");
        assert_eq!(stub.done_rip, 0x7000_0069);
        assert_eq!(stub.fail_rip, 0x7000_006a);
        assert_eq!(stub.syscall_gadget, 0x7000_006a);
        let skipped = disassemble(&stub.code[(stub.table_entry - stub.entry) as usize..], 0);
        assert_eq!(
            skipped[0], "xor r13,r13",
            "table_entry skips the table setup"
        );
    }

    #[test]
    fn table_layout_is_nine_words_per_op() {
        let ops = [
            Op::new(9, &[1, 2, 3, 4, 5, 6], Expect::Value(1), "mmap"),
            Op::new(11, &[7, 8], Expect::Success, "munmap"),
        ];
        let table = encode_table(&ops);
        assert_eq!(table.len(), 2 * OP_BYTES);
        let word = |i: usize| u64::from_le_bytes(table[i * 8..i * 8 + 8].try_into().unwrap());
        assert_eq!((word(0), word(6), word(7), word(8)), (9, 6, MODE_VALUE, 1));
        assert_eq!((word(9), word(10), word(16)), (11, 7, MODE_SUCCESS));
    }
}
