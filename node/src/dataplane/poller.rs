//! A level-triggered epoll instance over the packet thread's descriptors.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::time::Duration;

/// What a descriptor is watched for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Interest {
    /// Nothing (a paused TUN read).
    None,
    Read,
    /// Input, and room to send (a socket with queued datagrams).
    ReadWrite,
}

impl Interest {
    fn events(self) -> u32 {
        match self {
            Interest::None => 0,
            Interest::Read => libc::EPOLLIN as u32,
            Interest::ReadWrite => (libc::EPOLLIN | libc::EPOLLOUT) as u32,
        }
    }
}

/// One ready descriptor.
#[derive(Debug, Clone, Copy)]
pub struct Ready {
    pub token: u64,
    pub readable: bool,
    pub writable: bool,
}

#[derive(Debug)]
pub struct Poller {
    epoll: OwnedFd,
    events: [libc::epoll_event; 16],
}

impl Poller {
    pub fn new(descriptors: &[(RawFd, u64)]) -> std::io::Result<Self> {
        // SAFETY: plain epoll creation; checked before being owned.
        let epoll = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        if epoll < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: a fresh descriptor nobody else owns.
        let epoll = unsafe { OwnedFd::from_raw_fd(epoll) };
        let poller = Poller { epoll, events: [libc::epoll_event { events: 0, u64: 0 }; 16] };
        for &(fd, token) in descriptors {
            poller.add(fd, token)?;
        }
        Ok(poller)
    }

    /// Watches `fd` for input. Closing `fd` takes it out again.
    pub fn add(&self, fd: RawFd, token: u64) -> std::io::Result<()> {
        self.control(libc::EPOLL_CTL_ADD, fd, token, Interest::Read)
    }

    /// Changes what `fd` is watched for.
    pub fn modify(&self, fd: RawFd, token: u64, interest: Interest) -> std::io::Result<()> {
        self.control(libc::EPOLL_CTL_MOD, fd, token, interest)
    }

    fn control(&self, operation: libc::c_int, fd: RawFd, token: u64, interest: Interest) -> std::io::Result<()> {
        let mut event = libc::epoll_event { events: interest.events(), u64: token };
        // SAFETY: a valid descriptor and a valid event.
        if unsafe { libc::epoll_ctl(self.epoll.as_raw_fd(), operation, fd, &mut event) } < 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(())
    }

    /// Waits for readiness or `timeout`; the descriptors that are ready.
    pub fn wait(&mut self, timeout: Option<Duration>) -> impl Iterator<Item = Ready> + '_ {
        // Round up: waking a millisecond late is harmless, waking early spins.
        let timeout_ms = timeout.map_or(-1, |t| t.as_micros().div_ceil(1000).min(60_000) as libc::c_int);
        // SAFETY: the buffer holds `events.len()` entries.
        let ready = unsafe { libc::epoll_wait(self.epoll.as_raw_fd(), self.events.as_mut_ptr(), self.events.len() as libc::c_int, timeout_ms) };
        let ready = usize::try_from(ready).unwrap_or(0);
        self.events[..ready].iter().map(|event| {
            let flags = event.events;
            Ready {
                token: event.u64,
                readable: flags & (libc::EPOLLIN | libc::EPOLLERR | libc::EPOLLHUP) as u32 != 0,
                writable: flags & libc::EPOLLOUT as u32 != 0,
            }
        })
    }
}
