import FoundationEssentials
import ModelessBus
import ModelessSupervision
import ModelessSystem

/// A supervisor configuration file, JSON:
///
///     {
///       "service": "storage",
///       "instances": 1,
///       "command": ["modeless", "serve", "nvme", "0000:00:06.0", "--device", "disk"],
///       "stateDirectory": "/run/modeless/services/storage",
///       "restartDelaySeconds": 0,
///       "restartMaxDelaySeconds": 5,
///       "startAttempts": 5,
///       "startLimitBurst": 5,
///       "startLimitIntervalSeconds": 10,
///       "startTimeoutSeconds": 60,
///       "stopTimeoutSeconds": 5,
///       "cgroup": true,
///       "environment": {},
///       "device": "0000:00:06.0",
///       "standby": false
///     }
///
/// Only `service` and `command` are required. With `device`, an instance that ends while that
/// PCI function is gone (unplugged, or not bound to a user-mode driver) is restarted only once
/// it is back. A command starting with `modeless` runs this
/// program.
package struct SupervisorConfigurationFile: Decodable {
    var service: String
    var instances: Int?
    var command: [String]
    var stateDirectory: String?
    var restartDelaySeconds: Double?
    var restartMaxDelaySeconds: Double?
    var startAttempts: Int?
    var startLimitBurst: Int?
    var startLimitIntervalSeconds: Double?
    var startTimeoutSeconds: Double?
    var stopTimeoutSeconds: Double?
    var cgroup: Bool?
    var environment: [String: String]?
    var device: String?
    var standby: Bool?

    private enum CodingKeys: String, CodingKey, CaseIterable {
        case service, instances, command, stateDirectory, restartDelaySeconds, restartMaxDelaySeconds, startAttempts
        case startLimitBurst, startLimitIntervalSeconds, startTimeoutSeconds, stopTimeoutSeconds, cgroup, environment, device, standby
    }

    /// The keys of a configuration file, to name a misspelt one.
    static let keys = CodingKeys.allCases.map(\.rawValue)

    /// The configuration in the file at `path`, validated; a command starting with `modeless` runs
    /// the `modeless` beside this program. Refuses an unreadable file, bad JSON and unknown keys,
    /// naming what was wrong.
    package static func load(_ path: String) throws -> SupervisorConfiguration {
        guard let data = FileManager.default.contents(atPath: path) else {
            throw ConfigurationFileError("cannot read the configuration file \(path)")
        }
        let file: SupervisorConfigurationFile
        do { file = try JSONDecoder().decode(SupervisorConfigurationFile.self, from: data) } catch {
            throw ConfigurationFileError("\(path) is not a valid supervisor configuration (see docs/supervision.md): \(describe(error))")
        }
        if let object = try? JSONDecoder().decode(TopLevelKeys.self, from: data) {
            let unknown = object.names.filter { !keys.contains($0) }.sorted()
            guard unknown.isEmpty else {
                throw ConfigurationFileError("\(path): unknown key(s) \(unknown.joined(separator: ", ")); the keys are \(keys.joined(separator: ", ")) (see docs/supervision.md)")
            }
        }
        var command = file.command
        if command.first == "modeless", let this = try? ProgramRunner.builtProgram("modeless") { command[0] = this }
        let defaults = SupervisorConfiguration(service: file.service, command: command)
        let configuration = SupervisorConfiguration(
            service: file.service, instances: file.instances ?? 1, command: command, stateDirectory: file.stateDirectory,
            restartDelaySeconds: file.restartDelaySeconds ?? defaults.restartDelaySeconds,
            restartMaxDelaySeconds: file.restartMaxDelaySeconds ?? defaults.restartMaxDelaySeconds,
            startAttempts: file.startAttempts ?? defaults.startAttempts,
            startLimitBurst: file.startLimitBurst ?? defaults.startLimitBurst,
            startLimitIntervalSeconds: file.startLimitIntervalSeconds ?? defaults.startLimitIntervalSeconds,
            startTimeoutSeconds: file.startTimeoutSeconds ?? defaults.startTimeoutSeconds,
            stopTimeoutSeconds: file.stopTimeoutSeconds ?? defaults.stopTimeoutSeconds,
            useControlGroup: file.cgroup ?? defaults.useControlGroup,
            environment: file.environment ?? [:], standby: file.standby ?? false)
        do { try configuration.validate() } catch { throw ConfigurationFileError("\(path): \(error)") }
        return configuration
    }

    /// The `device` of the configuration file at `path`, if it names one: a PCI address.
    package static func device(in path: String) throws -> PCIAddress? {
        guard let data = FileManager.default.contents(atPath: path),
              let text = try? JSONDecoder().decode(SupervisorConfigurationFile.self, from: data).device else { return nil }
        guard let address = PCIAddress(text) else {
            throw ConfigurationFileError("\(path): device \"\(text)\" is not a PCI address (give one as 0000:00:06.0)")
        }
        return address
    }

    private static func describe(_ error: any Error) -> String {
        switch error as? DecodingError {
        case .keyNotFound(let key, _): "the key \"\(key.stringValue)\" is missing"
        case .typeMismatch(_, let context), .valueNotFound(_, let context), .dataCorrupted(let context):
            (context.codingPath.map(\.stringValue).joined(separator: ".") + " " + context.debugDescription).trimmingBlanks()
        default: "\(error)"
        }
    }
}

/// The top-level key names of a JSON object, to find misspelt ones without full Foundation
/// (which would load ICU into every `modeless` command).
private struct TopLevelKeys: Decodable {
    struct Name: CodingKey {
        var stringValue: String
        var intValue: Int? { nil }
        init(stringValue: String) { self.stringValue = stringValue }
        init?(intValue: Int) { nil }
    }

    let names: [String]

    init(from decoder: any Decoder) throws {
        names = try decoder.container(keyedBy: Name.self).allKeys.map(\.stringValue)
    }
}

/// A supervisor configuration file that cannot be used: what was wrong, naming the file.
package struct ConfigurationFileError: Error, CustomStringConvertible {
    /// What was wrong, for a person.
    package var description: String

    init(_ description: String) { self.description = description }
}
