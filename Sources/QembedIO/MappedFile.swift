import QembedCore
#if canImport(Glibc)
import Glibc
#endif

/// A whole file's bytes, validated as a regular file first. By default
/// they are read into memory this object owns, so a file truncated or
/// rewritten later changes nothing here; with `mapped` the file is mapped
/// read-only (zero copy, pages loaded on demand), and then it must not be
/// truncated while this object lives: the kernel answers a read of a page
/// past the new end with SIGBUS (the contract of numpy.memmap and
/// torch.load(mmap=True)).
public final class MappedFile: @unchecked Sendable {
    public let path: String
    public let base: UnsafeRawPointer
    public let size: Int
    /// True when `base` is a mapping of the file, false when it is owned memory.
    public let mapped: Bool

    public init(path: String, mapped: Bool = false) throws(QembedError) {
        self.path = path
        self.mapped = mapped
        // O_NONBLOCK: opening a FIFO (or a device) must not wait for a writer;
        // anything but a regular file is refused below, before any read.
        let fd = open(path, O_RDONLY | O_CLOEXEC | O_NONBLOCK)
        guard fd >= 0 else { throw QembedError(.io, "cannot open \(path): \(String(cString: strerror(errno)))") }
        defer { close(fd) }
        var st = stat()
        guard fstat(fd, &st) == 0 else { throw QembedError(.io, "cannot stat \(path): \(String(cString: strerror(errno)))") }
        guard (st.st_mode & S_IFMT) == S_IFREG else { throw QembedError(.io, "\(path) is not a regular file") }
        size = Int(st.st_size)
        if size == 0 {
            base = UnsafeRawPointer(bitPattern: 64)!  // never dereferenced: every read is bounds-checked against size
            return
        }
        if !mapped {
            let buf = UnsafeMutableRawPointer.allocate(byteCount: size, alignment: 64)
            var done = 0
            while done < size {
                let r = pread(fd, buf + done, min(size - done, 1 << 30), off_t(done))
                if r < 0 && errno == EINTR { continue }
                if r <= 0 {
                    let why = r == 0 ? "it shrank to \(done) bytes while being read" : String(cString: strerror(errno))
                    buf.deallocate()
                    throw QembedError(.io, "cannot read \(path): \(why)")
                }
                done += r
            }
            base = UnsafeRawPointer(buf)
            return
        }
        guard let p = mmap(nil, size, PROT_READ, MAP_PRIVATE, fd, 0), p != MAP_FAILED else {
            throw QembedError(.io, "cannot map \(path): \(String(cString: strerror(errno)))")
        }
        base = UnsafeRawPointer(p)
    }

    deinit {
        guard size > 0 else { return }
        if mapped { munmap(UnsafeMutableRawPointer(mutating: base), size) } else { UnsafeMutableRawPointer(mutating: base).deallocate() }
    }
}

/// Writes a file atomically: a temporary file in the same directory is
/// written, fsynced and renamed over `path`, then the directory is fsynced.
/// On any failure the temporary file is removed and `path` is untouched.
///
/// A program that is killed by a signal mid-write would leave the temporary
/// file behind; `pendingTemp` names the file being written (empty when none)
/// in a fixed buffer that a signal handler may read and `unlink` (both
/// async-signal-safe): the qembed command's SIGINT/SIGTERM handler does.
/// It is kept only when `trackPending` is set (by a single-writer program
/// such as the command; a library user writing from several threads leaves
/// it off, so the buffer is never written concurrently).
public enum AtomicFile {
    /// Record the temporary file of each write in `pendingTemp`.
    nonisolated(unsafe) public static var trackPending = false

    /// NUL-terminated path of the temporary file being written, or "".
    public static let pendingTemp: UnsafeMutablePointer<CChar> = {
        let p = UnsafeMutablePointer<CChar>.allocate(capacity: 4097)
        p.initialize(repeating: 0, count: 4097)
        return p
    }()

    private static func setPending(_ template: [CChar]) {
        let n = min(template.count, 4096)
        for i in 0..<n { pendingTemp[i] = template[i] }
        pendingTemp[n] = 0
    }

    /// `write(fd)` must write the whole content; chunks go through `writeAll`.
    public static func write(_ path: String, _ body: (Int32) throws(QembedError) -> Void) throws(QembedError) {
        guard !path.isEmpty else { throw .invalid("path is empty") }
        let dir: String
        if let slash = path.lastIndex(of: "/") { dir = slash == path.startIndex ? "/" : String(path[..<slash]) } else { dir = "." }
        // The temporary name is chosen here and recorded in pendingTemp
        // *before* the file is created (O_CREAT | O_EXCL, as mkstemp does), so
        // a signal arriving at any moment finds the name of any file it
        // could leave behind.
        let track = trackPending
        let letters = Array("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789".utf8)
        var tmp = "", fd: Int32 = -1
        for _ in 0..<100 {
            var suffix = ""
            for _ in 0..<8 { suffix.append(Character(Unicode.Scalar(letters[Int.random(in: 0..<letters.count)]))) }
            tmp = path + ".tmp-" + suffix
            if track { setPending(Array(tmp.utf8CString)) }
            fd = open(tmp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0o600)
            if fd >= 0 || errno != EEXIST { break }
        }
        guard fd >= 0 else {
            let m = String(cString: strerror(errno))
            if track { pendingTemp[0] = 0 }
            throw QembedError(.io, "cannot create a temporary file next to \(path): \(m)")
        }
        var ok = false
        defer {
            if !ok { close(fd); unlink(tmp) }
            if track { pendingTemp[0] = 0 }
        }
        try body(fd)
        guard fsync(fd) == 0 else { throw QembedError(.io, "fsync of \(tmp) failed: \(String(cString: strerror(errno)))") }
        fchmod(fd, 0o644)
        guard close(fd) == 0 else { ok = true; unlink(tmp); throw QembedError(.io, "close of \(tmp) failed") }
        guard rename(tmp, path) == 0 else {
            let m = String(cString: strerror(errno))
            ok = true; unlink(tmp)
            throw QembedError(.io, "cannot rename \(tmp) to \(path): \(m)")
        }
        ok = true
        let dfd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
        if dfd >= 0 { fsync(dfd); close(dfd) }
    }

    /// Writes all bytes of an array.
    public static func writeAll(_ fd: Int32, _ bytes: [UInt8]) throws(QembedError) {
        let err = bytes.withUnsafeBytes { h -> QembedError? in
            do throws(QembedError) { try writeAll(fd, h.baseAddress!, h.count); return nil } catch { return error }
        }
        if let err { throw err }
    }

    /// Writes all bytes, retrying short writes and EINTR.
    public static func writeAll(_ fd: Int32, _ p: UnsafeRawPointer, _ n: Int) throws(QembedError) {
        var done = 0
        while done < n {
            let r = Glibc.write(fd, p + done, min(n - done, 1 << 30))
            if r < 0 {
                if errno == EINTR { continue }
                throw QembedError(.io, "write failed: \(String(cString: strerror(errno)))")
            }
            done += r
        }
    }
}
