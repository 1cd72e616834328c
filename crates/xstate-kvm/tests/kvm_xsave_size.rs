//! How many bytes KVM_SET_XSAVE reads, measured on the real /dev/kvm (issue 9, item 2): the
//! `kvm` validation profile's size rule (`xstate::validate::required_size`) says the vCPU's
//! whole buffer, max(4096, KVM_CAP_XSAVE2), whatever the header says. A valid image (XSTATE_BV
//! = x87 | SSE) is placed so that the page after its last byte is inaccessible, and passed to
//! the raw ioctl: the kernel's copy from user memory fails (EFAULT) when it reads past it.
//! Prints `skipped: <reason>` where /dev/kvm is absent.
#![cfg(all(target_os = "linux", target_arch = "x86_64"))]

use kvm_ioctls::{Cap, Kvm};
use xstate::validate::{required_size, KvmConfig, Profile};

/// _IOW(KVMIO = 0xAE, 0xA5, struct kvm_xsave): 4096-byte argument (Linux UAPI).
const KVM_SET_XSAVE: libc::c_ulong = 0x5000_aea5;

/// An anonymous mapping of `pages` + 1 pages whose last page is PROT_NONE.
struct Fenced {
    ptr: *mut u8,
    len: usize,
    pages: usize,
}

impl Fenced {
    fn new(pages: usize) -> Fenced {
        let len = (pages + 1) * 4096;
        // SAFETY: a fresh anonymous private mapping; no existing memory is affected.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        assert_ne!(p, libc::MAP_FAILED, "mmap");
        // SAFETY: the last page of the mapping just made.
        let r = unsafe {
            libc::mprotect(
                p.cast::<u8>().add(pages * 4096).cast(),
                4096,
                libc::PROT_NONE,
            )
        };
        assert_eq!(r, 0, "mprotect");
        Fenced {
            ptr: p.cast(),
            len,
            pages,
        }
    }

    /// Copies `img` so that it ends at the guard page; returns its address.
    fn place(&mut self, img: &[u8]) -> *const u8 {
        assert!(img.len() <= self.pages * 4096);
        let start = self.pages * 4096 - img.len();
        // SAFETY: `start..start + img.len()` lies in the readable pages of the mapping.
        unsafe {
            std::ptr::copy_nonoverlapping(img.as_ptr(), self.ptr.add(start), img.len());
            self.ptr.add(start)
        }
    }
}

impl Drop for Fenced {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly the mapping made in `new`.
        unsafe {
            libc::munmap(self.ptr.cast(), self.len);
        }
    }
}

#[test]
fn kvm_set_xsave_reads_the_whole_vcpu_buffer() {
    if let Some(why) = xstate_kvm::unavailable() {
        println!("skipped: {why}");
        return;
    }
    let kvm = Kvm::new().expect("/dev/kvm");
    let xsave2 = kvm.check_extension_int(Cap::Xsave2).max(4096) as usize;
    let vm = kvm.create_vm().expect("KVM_CREATE_VM");
    let vcpu = vm.create_vcpu(0).expect("KVM_CREATE_VCPU");
    let fd = std::os::fd::AsRawFd::as_raw_fd(&vcpu);
    let mut img = vec![0u8; xsave2];
    img[0..2].copy_from_slice(&0x037fu16.to_le_bytes()); // FCW init
    img[24..28].copy_from_slice(&0x1f80u32.to_le_bytes()); // MXCSR init
    img[512] = 0x3; // XSTATE_BV: x87, SSE
    let mut mem = Fenced::new(xsave2.div_ceil(4096) + 1);
    let set = |mem: &mut Fenced, n: usize| -> i32 {
        let p = mem.place(&img[..n]);
        // SAFETY: KVM_SET_XSAVE only reads from `p`; a read past the readable pages is
        // reported by the kernel as EFAULT, not a fault in this process.
        let r = unsafe { libc::ioctl(fd, KVM_SET_XSAVE, p) };
        if r == 0 {
            0
        } else {
            std::io::Error::last_os_error().raw_os_error().unwrap_or(-1)
        }
    };
    // The whole buffer: accepted.
    assert_eq!(set(&mut mem, xsave2), 0, "the full {xsave2}-byte buffer");
    // One byte short, and short to the image's meaningful end (576 bytes for x87 | SSE): the
    // kernel reads past it.
    for n in [xsave2 - 1, xsave2 - 64, 576] {
        assert_eq!(
            set(&mut mem, n),
            libc::EFAULT,
            "{n} bytes before the guard page"
        );
    }
    // The profile's rule says the same.
    let l = xstate::layout::Layout::from_dump(&xstate::cpuid::CpuidDump::from_host());
    let supported = xstate_kvm::KvmSetup::open()
        .and_then(|k| k.guest_supported_xcr0())
        .unwrap_or(l.xcr0_supported());
    let mut cfg = KvmConfig::new(supported, 0xffff);
    cfg.user_features = supported & !xstate::components::mask::DYNAMIC;
    let need = required_size(&img, &Profile::Kvm(cfg), &l).unwrap() as usize;
    println!("KVM_CAP_XSAVE2 {xsave2}, rule {need}, kernel reads {xsave2}");
    assert_eq!(need, xsave2);
}
