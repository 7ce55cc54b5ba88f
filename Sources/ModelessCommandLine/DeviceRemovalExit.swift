import ModelessDevice

/// Whether `error` says the device was removed (a requested or surprise removal, as the
/// driver's remove routine or datapath saw it): then the command prints what happened and
/// ends with exit status 0, having released the device, instead of failing.
package func reportRemoval(_ error: any Error) -> Bool {
    guard let failure = error as? any DeviceRemovalReporting, failure.isDeviceRemoval else { return false }
    let what = "\(error)"
    printLine((what.hasPrefix("device removed") ? what : "device removed: " + what)
              + "; the driver stopped and failed what was in flight; releasing the device")
    return true
}
