#if canImport(Glibc)
import Glibc
#endif

/// SIGINT and SIGTERM, blocked in every thread so that a long-running command can wait for
/// them and shut down in order. Call ``block()`` before starting any thread.
package enum TerminationSignals {
    /// Blocks SIGINT and SIGTERM in this thread and the threads it starts afterwards.
    package static func block() {
        var set = signals
        pthread_sigmask(SIG_BLOCK, &set, nil)
    }

    /// Waits for SIGINT or SIGTERM.
    package static func wait() {
        var set = signals
        var received: Int32 = 0
        sigwait(&set, &received)
    }

    private static var signals: sigset_t {
        var set = sigset_t()
        sigemptyset(&set)
        sigaddset(&set, SIGINT)
        sigaddset(&set, SIGTERM)
        return set
    }
}
