import CModelessShim

#if canImport(Glibc)
import Glibc
#endif

extension posix_spawn_file_actions_t {
    /// Gives a spawned program its standard descriptors and nothing else of this process:
    /// standard input from `/dev/null`, standard output and error to `output`, and every other
    /// descriptor closed, whatever a library opened without close-on-exec.
    mutating func giveStandardDescriptors(output: Int32) {
        posix_spawn_file_actions_addopen(&self, 0, "/dev/null", O_RDONLY, 0)
        posix_spawn_file_actions_adddup2(&self, output, 1)
        posix_spawn_file_actions_adddup2(&self, output, 2)
        _ = modeless_spawn_close_from(&self, 3)
    }
}
