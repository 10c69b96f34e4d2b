//! The few Windows calls `windows-service` does not offer: a service's environment, a process's
//! creation time, CTRL_BREAK to a process group, and the Event Log.
//!
//! Each `unsafe` block is one documented Win32 call on NUL-terminated UTF-16 buffers that live
//! across the call; handles are closed on every path.
#![allow(unsafe_code)]

use std::ffi::OsStr;
use std::os::windows::ffi::OsStrExt;

use super::eventlog::EventLevel;
use windows_sys::Win32::Foundation::{CloseHandle, ERROR_FILE_NOT_FOUND, ERROR_SUCCESS, FILETIME};
use windows_sys::Win32::System::Console::{
    AllocConsole, CTRL_BREAK_EVENT, GenerateConsoleCtrlEvent,
};
use windows_sys::Win32::System::EventLog::{
    DeregisterEventSource, EVENTLOG_ERROR_TYPE, EVENTLOG_INFORMATION_TYPE, EVENTLOG_WARNING_TYPE,
    RegisterEventSourceW, ReportEventW,
};
use windows_sys::Win32::System::Registry::{
    HKEY, HKEY_LOCAL_MACHINE, KEY_QUERY_VALUE, KEY_SET_VALUE, REG_DWORD, REG_EXPAND_SZ,
    REG_MULTI_SZ, REG_OPTION_NON_VOLATILE, RRF_RT_REG_MULTI_SZ, RegCloseKey, RegCreateKeyExW,
    RegDeleteKeyW, RegDeleteValueW, RegGetValueW, RegOpenKeyExW, RegSetValueExW,
};
use windows_sys::Win32::System::Threading::{
    GetExitCodeProcess, GetProcessTimes, OpenProcess, PROCESS_QUERY_LIMITED_INFORMATION,
    PROCESS_TERMINATE, TerminateProcess,
};

/// A NUL-terminated UTF-16 string.
fn wide(s: impl AsRef<OsStr>) -> Vec<u16> {
    s.as_ref().encode_wide().chain(Some(0)).collect()
}

fn win32_error(code: u32) -> std::io::Error {
    std::io::Error::from_raw_os_error(code as i32)
}

/// `REG_MULTI_SZ` data: each string NUL-terminated, then one more NUL.
pub fn multi_sz(strings: &[String]) -> Vec<u16> {
    let mut out: Vec<u16> = strings
        .iter()
        .flat_map(|s| s.encode_utf16().chain(Some(0)))
        .collect();
    if strings.is_empty() {
        out.push(0);
    }
    out.push(0);
    out
}

/// An open registry key, closed on drop.
struct Key(HKEY);

impl Drop for Key {
    fn drop(&mut self) {
        // SAFETY: the key was opened by RegOpenKeyExW/RegCreateKeyExW and is closed once.
        unsafe { RegCloseKey(self.0) };
    }
}

fn open_key(path: &str, access: u32) -> std::io::Result<Key> {
    let path = wide(path);
    let mut key: HKEY = std::ptr::null_mut();
    // SAFETY: `path` is NUL-terminated; `key` receives the opened handle.
    let rc = unsafe { RegOpenKeyExW(HKEY_LOCAL_MACHINE, path.as_ptr(), 0, access, &mut key) };
    if rc != ERROR_SUCCESS {
        return Err(win32_error(rc));
    }
    Ok(Key(key))
}

fn create_key(path: &str) -> std::io::Result<Key> {
    let path = wide(path);
    let mut key: HKEY = std::ptr::null_mut();
    // SAFETY: `path` is NUL-terminated; no class, default security; `key` receives the handle.
    let rc = unsafe {
        RegCreateKeyExW(
            HKEY_LOCAL_MACHINE,
            path.as_ptr(),
            0,
            std::ptr::null(),
            REG_OPTION_NON_VOLATILE,
            KEY_SET_VALUE,
            std::ptr::null(),
            &mut key,
            std::ptr::null_mut(),
        )
    };
    if rc != ERROR_SUCCESS {
        return Err(win32_error(rc));
    }
    Ok(Key(key))
}

fn set_value(key: &Key, name: &str, kind: u32, data: &[u8]) -> std::io::Result<()> {
    let name = wide(name);
    // SAFETY: `name` is NUL-terminated and `data` is valid for its length.
    let rc = unsafe {
        RegSetValueExW(
            key.0,
            name.as_ptr(),
            0,
            kind,
            data.as_ptr(),
            data.len() as u32,
        )
    };
    if rc != ERROR_SUCCESS {
        return Err(win32_error(rc));
    }
    Ok(())
}

fn utf16_bytes(units: &[u16]) -> Vec<u8> {
    units.iter().flat_map(|u| u.to_le_bytes()).collect()
}

fn service_key(service: &str) -> String {
    format!(r"SYSTEM\CurrentControlSet\Services\{service}")
}

/// Sets (or, when empty, removes) a service's `Environment` value: the `K=V` strings the SCM
/// adds to the environment of the service's process.
pub fn set_service_environment(service: &str, env: &[String]) -> std::io::Result<()> {
    let key = open_key(&service_key(service), KEY_SET_VALUE)?;
    if env.is_empty() {
        let name = wide("Environment");
        // SAFETY: `name` is NUL-terminated.
        let rc = unsafe { RegDeleteValueW(key.0, name.as_ptr()) };
        return match rc {
            ERROR_SUCCESS | ERROR_FILE_NOT_FOUND => Ok(()),
            rc => Err(win32_error(rc)),
        };
    }
    set_value(
        &key,
        "Environment",
        REG_MULTI_SZ,
        &utf16_bytes(&multi_sz(env)),
    )
}

/// A service's `Environment` value as written ([] when it has none).
pub fn service_environment(service: &str) -> std::io::Result<Vec<String>> {
    let key = open_key(&service_key(service), KEY_QUERY_VALUE)?;
    let name = wide("Environment");
    let mut buf = vec![0u16; 32 * 1024];
    let mut bytes = (buf.len() * 2) as u32;
    // SAFETY: `name` is NUL-terminated; `buf` holds `bytes` bytes.
    let rc = unsafe {
        RegGetValueW(
            key.0,
            std::ptr::null(),
            name.as_ptr(),
            RRF_RT_REG_MULTI_SZ,
            std::ptr::null_mut(),
            buf.as_mut_ptr().cast(),
            &mut bytes,
        )
    };
    match rc {
        ERROR_SUCCESS => {}
        ERROR_FILE_NOT_FOUND => return Ok(vec![]),
        rc => return Err(win32_error(rc)),
    }
    buf.truncate(bytes as usize / 2);
    Ok(buf
        .split(|u| *u == 0)
        .filter(|s| !s.is_empty())
        .map(String::from_utf16_lossy)
        .collect())
}

/// A process's creation time (100 ns units since 1601), to tell a pid apart from a reused one.
pub fn process_start_time(pid: u32) -> Option<u64> {
    // SAFETY: OpenProcess returns null on failure; a handle it returns is closed below.
    let process = unsafe { OpenProcess(PROCESS_QUERY_LIMITED_INFORMATION, 0, pid) };
    if process.is_null() {
        return None;
    }
    let zero = FILETIME {
        dwLowDateTime: 0,
        dwHighDateTime: 0,
    };
    let (mut created, mut exited, mut kernel, mut user) = (zero, zero, zero, zero);
    let mut exit_code = 0u32;
    // SAFETY: `process` is a valid handle with query rights; the out-pointers are live locals.
    let (times, code) = unsafe {
        (
            GetProcessTimes(process, &mut created, &mut exited, &mut kernel, &mut user),
            GetExitCodeProcess(process, &mut exit_code),
        )
    };
    // SAFETY: closes the handle opened above, once.
    unsafe { CloseHandle(process) };
    // STILL_ACTIVE: an exited process whose handle is still held elsewhere is not running.
    const STILL_ACTIVE: u32 = 259;
    if times == 0 || code == 0 || exit_code != STILL_ACTIVE {
        return None;
    }
    Some((u64::from(created.dwHighDateTime) << 32) | u64::from(created.dwLowDateTime))
}

/// Sends CTRL_BREAK to the process group `pid` leads (a child spawned with
/// `CREATE_NEW_PROCESS_GROUP` that shares this process's console).
pub fn ctrl_break(pid: u32) -> std::io::Result<()> {
    // SAFETY: no pointers; fails cleanly when the group shares no console with this process.
    if unsafe { GenerateConsoleCtrlEvent(CTRL_BREAK_EVENT, pid) } == 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Gives this process a console when it has none (a service), so that the console programs it
/// starts share it and [`ctrl_break`] reaches them.
pub fn ensure_console() {
    // SAFETY: no arguments; fails harmlessly when a console is already attached.
    unsafe { AllocConsole() };
}

/// Terminates process `pid` with exit code 1.
pub fn terminate(pid: u32) -> std::io::Result<()> {
    // SAFETY: OpenProcess returns null on failure; a handle it returns is closed below.
    let process = unsafe { OpenProcess(PROCESS_TERMINATE, 0, pid) };
    if process.is_null() {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: `process` is a valid handle with terminate rights; closed once after.
    let ok = unsafe { TerminateProcess(process, 1) };
    let err = std::io::Error::last_os_error();
    // SAFETY: as above.
    unsafe { CloseHandle(process) };
    if ok == 0 { Err(err) } else { Ok(()) }
}

fn event_source_key(source: &str) -> String {
    format!(r"SYSTEM\CurrentControlSet\Services\EventLog\Application\{source}")
}

/// Registers `source` in the Application log, with `message_file` (an executable or DLL holding
/// the message table) as its `EventMessageFile`.
pub fn register_event_source(source: &str, message_file: &str) -> std::io::Result<()> {
    let key = create_key(&event_source_key(source))?;
    set_value(
        &key,
        "EventMessageFile",
        REG_EXPAND_SZ,
        &utf16_bytes(&wide(message_file)),
    )?;
    // Error, warning and information entries.
    set_value(&key, "TypesSupported", REG_DWORD, &7u32.to_le_bytes())
}

/// Whether `source` is registered in the Application log.
pub fn event_source_registered(source: &str) -> bool {
    open_key(&event_source_key(source), KEY_QUERY_VALUE).is_ok()
}

/// Removes the registration of `source` (nothing to do when it has none).
pub fn deregister_event_source(source: &str) -> std::io::Result<()> {
    let path = wide(event_source_key(source));
    // SAFETY: `path` is NUL-terminated.
    match unsafe { RegDeleteKeyW(HKEY_LOCAL_MACHINE, path.as_ptr()) } {
        ERROR_SUCCESS | ERROR_FILE_NOT_FOUND => Ok(()),
        rc => Err(win32_error(rc)),
    }
}

/// Writes one entry to the Application log under `source`.
pub fn report_event(
    source: &str,
    level: EventLevel,
    event_id: u32,
    message: &str,
) -> std::io::Result<()> {
    let source = wide(source);
    // SAFETY: `source` is NUL-terminated; the local computer's log.
    let log = unsafe { RegisterEventSourceW(std::ptr::null(), source.as_ptr()) };
    if log.is_null() {
        return Err(std::io::Error::last_os_error());
    }
    let kind = match level {
        EventLevel::Error => EVENTLOG_ERROR_TYPE,
        EventLevel::Warning => EVENTLOG_WARNING_TYPE,
        EventLevel::Information => EVENTLOG_INFORMATION_TYPE,
    };
    let text = wide(message);
    let strings = [text.as_ptr()];
    // SAFETY: `log` is a valid event source handle; one NUL-terminated string, no raw data.
    let ok = unsafe {
        ReportEventW(
            log,
            kind,
            0,
            event_id,
            std::ptr::null_mut(),
            1,
            0,
            strings.as_ptr(),
            std::ptr::null(),
        )
    };
    let err = std::io::Error::last_os_error();
    // SAFETY: closes the handle registered above, once.
    unsafe { DeregisterEventSource(log) };
    if ok == 0 { Err(err) } else { Ok(()) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn multi_sz_is_nul_separated_and_double_terminated() {
        let data = multi_sz(&["A=1".into(), "B=2".into()]);
        assert_eq!(String::from_utf16_lossy(&data), "A=1\0B=2\0\0");
        assert_eq!(multi_sz(&[]), vec![0, 0]);
    }

    #[test]
    fn own_start_time_is_known_and_stable() {
        let me = std::process::id();
        let t = process_start_time(me).expect("own creation time");
        assert!(t > 0);
        assert_eq!(process_start_time(me), Some(t));
        assert_eq!(process_start_time(u32::MAX - 3), None);
    }

    #[test]
    fn event_source_registration_round_trips_and_reports() {
        let source = format!("rollgate-test-{}", std::process::id());
        register_event_source(&source, r"%SystemRoot%\System32\kernel32.dll").unwrap();
        assert!(event_source_registered(&source));
        for level in [
            EventLevel::Error,
            EventLevel::Warning,
            EventLevel::Information,
        ] {
            report_event(&source, level, 1000, "a test entry").unwrap();
        }
        deregister_event_source(&source).unwrap();
        assert!(!event_source_registered(&source));
        deregister_event_source(&source).unwrap();
    }
}
