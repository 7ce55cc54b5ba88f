import Glibc
import ModelessSystem
import Testing

/// `modeless overrides` on a configuration directory of the test's own: nothing here binds.
@Suite("Command line: persistent overrides")
struct OverridesCommandTests {
    /// A fresh configuration directory with `files` in its overrides/.
    func configDirectory(_ files: [String: String]) throws -> String {
        var template = Array("/tmp/modeless-config-XXXXXX".utf8CString)
        let directory = String(cString: try #require(mkdtemp(&template)))
        try FileAccess.createDirectories("\(directory)/overrides")
        for (name, text) in files { try FileAccess.replaceFile("\(directory)/overrides/\(name)", with: Array(text.utf8)) }
        return directory
    }

    @Test func listsOverridesAndWhetherTheDeviceIsPresent() throws {
        let directory = try configDirectory(["0000:ff:1f.7": #"{"driver":"uio_pci_generic","force":false}"#])
        defer { _ = try? ProgramRunner.run("rm", ["-rf", directory]) }
        let table = try modeless("overrides", "--config-dir", directory)
        #expect(table.status == 0, "\(table.output)")
        #expect(table.output.contains("0000:ff:1f.7 -> uio_pci_generic  [device absent]"), "\(table.output)")
        let json = try modeless("overrides", "list", "--json", "--config-dir", directory)
        #expect(json.output.contains(#""present" : false"#), "\(json.output)")
        // Applying it at boot: the device is absent, which is said and exits 66, changing nothing.
        let applied = try modeless("overrides", "apply", "--config-dir", directory)
        #expect(applied.status == 66, "\(applied.output)")
        #expect(applied.output.contains("0000:ff:1f.7: not applied: no PCI device at 0000:ff:1f.7"), "\(applied.output)")
    }

    @Test(arguments: [
        ("0000:00:1f", #"{"driver":"vfio-pci"}"#, "is not named after a full PCI address"),
        ("0000:00:1f.7", #"{"driver":"e1000"}"#, "is not a persistent override"),
        ("0000:00:1f.7", "vfio-pci", "is not a persistent override"),
    ])
    func refusesAnInvalidOverrideFile(_ name: String, _ text: String, _ message: String) throws {
        let directory = try configDirectory([name: text])
        defer { _ = try? ProgramRunner.run("rm", ["-rf", directory]) }
        for arguments in [["overrides"], ["overrides", "apply"], ["unbind", "zz", "--persist"]] {
            let result = try ProgramRunner.run(try modelessPath(), arguments + ["--config-dir", directory])
            #expect(result.status == 81, "\(arguments): \(result.output)")
            #expect(result.output.contains("\(directory)/overrides/\(name)"), "\(result.output)")
            #expect(result.output.contains(message), "\(result.output)")
        }
        // Nothing was removed or rewritten.
        #expect(FileAccess.readTextIfPresent("\(directory)/overrides/\(name)") == text)
    }
}
