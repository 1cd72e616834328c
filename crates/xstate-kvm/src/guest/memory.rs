//! Guest RAM: an anonymous host mapping with bounds-checked reads and writes.

use crate::error::{Error, Result};

/// Anonymous, zeroed host memory that backs guest physical memory from address 0.
pub struct GuestMemory {
    ptr: *mut u8,
    size: usize,
}

// SAFETY: the mapping is owned by this value and only accessed through `&self`/`&mut self`
// methods that copy bytes; moving it to another thread moves the ownership.
unsafe impl Send for GuestMemory {}

impl std::fmt::Debug for GuestMemory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GuestMemory")
            .field("size", &self.size)
            .finish()
    }
}

impl GuestMemory {
    /// Maps `size` bytes of zeroed memory.
    pub fn new(size: usize) -> Result<Self> {
        // SAFETY: an anonymous private mapping at a kernel-chosen address touches no existing
        // memory; the result is checked against MAP_FAILED.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                size,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(Error::Guest(format!(
                "mmap of {size} bytes of guest memory: {}",
                std::io::Error::last_os_error()
            )));
        }
        Ok(GuestMemory {
            ptr: p.cast(),
            size,
        })
    }

    /// Size in bytes.
    pub fn size(&self) -> usize {
        self.size
    }

    /// The KVM_SET_USER_MEMORY_REGION argument that maps this memory at guest physical
    /// address 0 in `slot`. Passing it to `VmFd::set_user_memory_region` is `unsafe` for the
    /// caller: the memory must outlive the VM's use of the slot.
    pub fn region(&self, slot: u32) -> kvm_bindings::kvm_userspace_memory_region {
        kvm_bindings::kvm_userspace_memory_region {
            slot,
            flags: 0,
            guest_phys_addr: 0,
            memory_size: self.size as u64,
            userspace_addr: self.ptr as u64,
        }
    }

    fn check(&self, gpa: u64, len: usize) -> Result<usize> {
        let start = usize::try_from(gpa).ok();
        match start.and_then(|s| s.checked_add(len).map(|e| (s, e))) {
            Some((s, e)) if e <= self.size => Ok(s),
            _ => Err(Error::Guest(format!(
                "guest range {gpa:#x}+{len:#x} is outside guest memory (size {:#x})",
                self.size
            ))),
        }
    }

    /// Copies `data` to guest physical address `gpa`.
    pub fn write(&mut self, gpa: u64, data: &[u8]) -> Result<()> {
        let s = self.check(gpa, data.len())?;
        // SAFETY: `s..s+len` lies inside the mapping (checked above); `data` is a separate
        // host buffer, so the ranges do not overlap. No vCPU runs while `&mut self` is held
        // by the harness.
        unsafe { std::ptr::copy_nonoverlapping(data.as_ptr(), self.ptr.add(s), data.len()) };
        Ok(())
    }

    /// Reads `len` bytes at guest physical address `gpa`.
    pub fn read(&self, gpa: u64, len: usize) -> Result<Vec<u8>> {
        let s = self.check(gpa, len)?;
        let mut v = vec![0u8; len];
        // SAFETY: `s..s+len` lies inside the mapping (checked above); `v` is a fresh buffer of
        // `len` bytes.
        unsafe { std::ptr::copy_nonoverlapping(self.ptr.add(s), v.as_mut_ptr(), len) };
        Ok(v)
    }
}

impl Drop for GuestMemory {
    fn drop(&mut self) {
        // SAFETY: `ptr`/`size` are exactly the mapping created in `new`, unmapped once.
        unsafe {
            libc::munmap(self.ptr.cast(), self.size);
        }
    }
}
