"""Headless Chromium (Debian's ``chromium`` + ``chromium-driver``) driven by selenium, for the
viewer tests and the viewer benchmark. selenium-manager is never used: the driver is the one on
PATH, so nothing is downloaded."""
import shutil


def chromium_paths():
    """``(browser, driver)`` paths, or a reason string when either is missing."""
    browser = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    driver = shutil.which("chromedriver")
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium is not installed (pip install selenium; it is in the test extras)"
    if not browser or not driver:
        return ("chromium and chromedriver not found on PATH (bash tools/bootstrap.sh installs them as root; "
                "else apt-get install chromium chromium-driver)")
    return browser, driver


def open_chromium(width=1500, height=1000):
    """A headless Chromium WebDriver that records the browser console."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    found = chromium_paths()
    if isinstance(found, str):
        raise RuntimeError(found)
    browser, driver = found
    options = webdriver.ChromeOptions()
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                f"--window-size={width},{height}", "--force-device-scale-factor=1", "--allow-file-access-from-files"):
        options.add_argument(arg)
    options.binary_location = browser
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return webdriver.Chrome(service=Service(executable_path=driver), options=options)


def load(driver, path, timeout=60):
    """Open a local HTML file and wait until the page says it is ready (``body[data-ready]``)."""
    from selenium.webdriver.support.ui import WebDriverWait

    driver.get(f"file://{path}")
    WebDriverWait(driver, timeout).until(
        lambda d: d.execute_script("return document.body && document.body.dataset.ready"))
    return driver.execute_script("return document.body.dataset.ready")
