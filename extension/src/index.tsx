/**
 * nbscale in JupyterLab and Notebook 7: a left side panel (Jobs, Pipelines,
 * Endpoints), job and run views in the main area, and "Run as job" /
 * "Run as pipeline" in the notebook toolbar. All data comes from
 * /nbscale/api/ through api/client.ts.
 */
import {
  ILayoutRestorer,
  JupyterFrontEnd,
  JupyterFrontEndPlugin
} from '@jupyterlab/application';
import {
  Dialog,
  MainAreaWidget,
  ReactWidget,
  showDialog,
  showErrorMessage,
  ToolbarButton
} from '@jupyterlab/apputils';
import { PageConfig, PathExt } from '@jupyterlab/coreutils';
import { DocumentRegistry } from '@jupyterlab/docregistry';
import {
  INotebookModel,
  INotebookTracker,
  NotebookActions,
  NotebookPanel
} from '@jupyterlab/notebook';
import { ISettingRegistry } from '@jupyterlab/settingregistry';
import {
  ITranslator,
  nullTranslator,
  TranslationBundle
} from '@jupyterlab/translation';
import { LabIcon, SidePanel } from '@jupyterlab/ui-components';
import { DisposableDelegate, IDisposable } from '@lumino/disposable';
import { Widget } from '@lumino/widgets';
import * as React from 'react';

import { checkServer, startRun, submitJob } from './api/client';
import { EndpointsSection } from './components/EndpointsSection';
import { JobsSection } from './components/JobsSection';
import { JobView } from './components/JobView';
import { PipelinesSection, RunView } from './components/PipelinesSection';
import { RunDialogBody } from './components/RunDialog';
import { SweepsSection } from './components/SweepsSection';
import { errorText, IPanelContext } from './context';

const PLUGIN_ID = 'nbscale:plugin';

namespace CommandIDs {
  export const openPanel = 'nbscale:open-panel';
  export const openJob = 'nbscale:open-job';
  export const openRun = 'nbscale:open-run';
  export const runAsJob = 'nbscale:run-as-job';
  export const runAsPipeline = 'nbscale:run-as-pipeline';
}

const ICON_SVG = `<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 24 24"><g class="jp-icon3" fill="#616161"><rect x="3" y="14" width="4" height="7" rx="1"/><rect x="10" y="9" width="4" height="12" rx="1"/><rect x="17" y="3" width="4" height="18" rx="1"/></g></svg>`;
const nbscaleIcon = new LabIcon({ name: 'nbscale:icon', svgstr: ICON_SVG });

function section(title: string, element: JSX.Element): Widget {
  const widget = ReactWidget.create(element);
  widget.title.label = title;
  widget.addClass('nbs-section-widget');
  return widget;
}

/** A notice under the panel title when the server side is missing or of another version. */
class ServerNotice extends Widget {
  constructor() {
    super();
    this.addClass('nbs-server-notice');
    this.hide();
  }

  show_(text: string): void {
    this.node.textContent = text;
    this.node.setAttribute('role', 'alert');
    this.show();
  }
}

async function serverProblem(trans: TranslationBundle): Promise<string | null> {
  const result = await checkServer();
  switch (result.kind) {
    case 'ok':
      return null;
    case 'missing':
      return trans.__(
        'The nbscale server extension is not running. Run "jupyter server extension enable nbscale.server_ext" and restart Jupyter.'
      );
    case 'mismatch':
      return trans.__(
        'The nbscale server extension %1 speaks API %2, this panel another one. Install the same nbscale version for both and restart Jupyter.',
        result.version,
        result.apiVersion
      );
    default:
      return trans.__(
        'The nbscale server extension did not answer: %1',
        result.message
      );
  }
}

const plugin: JupyterFrontEndPlugin<void> = {
  id: PLUGIN_ID,
  description: 'Jobs, pipelines and endpoints of nbscale inside JupyterLab.',
  autoStart: true,
  requires: [],
  optional: [ITranslator, ILayoutRestorer, ISettingRegistry, INotebookTracker],
  activate: (
    app: JupyterFrontEnd,
    translator: ITranslator | null,
    restorer: ILayoutRestorer | null,
    settingRegistry: ISettingRegistry | null,
    tracker: INotebookTracker | null
  ) => {
    const trans = (translator ?? nullTranslator).load('nbscale');
    const settings = { refreshSeconds: 2, defaultBackend: '' };
    const views = new Map<string, MainAreaWidget>();

    const openInMain = (
      key: string,
      label: string,
      make: (w: {
        setTitle: (t: string) => void;
        isVisible: () => boolean;
      }) => JSX.Element
    ) => {
      const existing = views.get(key);
      if (existing && !existing.isDisposed) {
        app.shell.activateById(existing.id);
        return;
      }
      let main: MainAreaWidget | null = null;
      const handle = {
        setTitle: (t: string) => {
          if (main) {
            main.title.label = t;
          }
        },
        isVisible: () => !!main && main.isVisible
      };
      const content = ReactWidget.create(make(handle));
      main = new MainAreaWidget({ content });
      main.id = `nbscale-${key.replace(/[^A-Za-z0-9_-]/g, '-')}`;
      main.title.label = label;
      main.title.icon = nbscaleIcon;
      main.title.closable = true;
      views.set(key, main);
      app.shell.add(main, 'main');
      app.shell.activateById(main.id);
    };

    const panelContext = (isVisible: () => boolean): IPanelContext => ({
      trans,
      refreshMs: () => Math.max(0.5, settings.refreshSeconds) * 1000,
      isVisible,
      openJob: id => void app.commands.execute(CommandIDs.openJob, { id }),
      openRun: id => void app.commands.execute(CommandIDs.openRun, { id }),
      openPath: path => {
        const root = PageConfig.getOption('serverRoot');
        let relative = path;
        if (path.startsWith('/')) {
          if (!root || !path.startsWith(root)) {
            void showErrorMessage(
              trans.__('nbscale'),
              trans.__(
                '%1 is outside the directory Jupyter serves, so it cannot be opened here.',
                path
              )
            );
            return;
          }
          relative = PathExt.relative(root, path);
        }
        void app.commands.execute('docmanager:open', { path: relative });
      },
      insertAttach: jobId => {
        const current = tracker?.currentWidget;
        if (!current) {
          return false;
        }
        NotebookActions.insertBelow(current.content);
        current.content.activeCell?.model.sharedModel.setSource(
          `%attach ${jobId}`
        );
        app.shell.activateById(current.id);
        return true;
      }
    });

    // -- the side panel
    const panel = new SidePanel({ translator: translator ?? nullTranslator });
    panel.id = 'nbscale-panel';
    panel.title.icon = nbscaleIcon;
    panel.title.caption = trans.__('nbscale: jobs, pipelines, endpoints');
    const notice = new ServerNotice();
    panel.header.addWidget(notice);
    const ctx = panelContext(() => panel.isVisible);
    panel.addWidget(section(trans.__('Jobs'), <JobsSection ctx={ctx} />));
    panel.addWidget(
      section(trans.__('Pipelines'), <PipelinesSection ctx={ctx} />)
    );
    panel.addWidget(section(trans.__('Sweeps'), <SweepsSection ctx={ctx} />));
    panel.addWidget(
      section(trans.__('Endpoints'), <EndpointsSection ctx={ctx} />)
    );
    app.shell.add(panel, 'left', { rank: 650 });
    restorer?.add(panel, 'nbscale-panel');

    // activate must not wait on the network: it would delay Lab's start
    void serverProblem(trans).then(problem => {
      if (problem) {
        notice.show_(problem);
        console.warn(`nbscale: ${problem}`);
      }
    });

    if (settingRegistry) {
      void settingRegistry
        .load(PLUGIN_ID)
        .then(loaded => {
          const apply = () => {
            settings.refreshSeconds = loaded.get('refreshInterval')
              .composite as number;
            settings.defaultBackend = loaded.get('defaultBackend')
              .composite as string;
          };
          apply();
          loaded.changed.connect(apply);
        })
        .catch(reason =>
          console.error('nbscale: could not load settings', reason)
        );
    }

    // -- commands
    app.commands.addCommand(CommandIDs.openPanel, {
      label: trans.__('Open the nbscale panel'),
      execute: () => app.shell.activateById(panel.id)
    });
    app.commands.addCommand(CommandIDs.openJob, {
      label: trans.__('Open nbscale job'),
      execute: args => {
        const id = String(args.id);
        openInMain(`job-${id}`, id, h => (
          <JobView
            ctx={{ ...panelContext(h.isVisible) }}
            jobId={id}
            onTitle={h.setTitle}
          />
        ));
      }
    });
    app.commands.addCommand(CommandIDs.openRun, {
      label: trans.__('Open nbscale pipeline run'),
      execute: args => {
        const id = String(args.id);
        openInMain(`run-${id}`, id, h => (
          <RunView
            ctx={panelContext(h.isVisible)}
            runId={id}
            onTitle={h.setTitle}
          />
        ));
      }
    });

    const runDialog = async (nb: NotebookPanel, mode: 'job' | 'pipeline') => {
      const body = new RunDialogBody(trans, mode, settings.defaultBackend);
      const result = await showDialog({
        title:
          mode === 'job'
            ? trans.__('Run %1 as a job', nb.title.label)
            : trans.__('Run %1 as a pipeline', nb.title.label),
        body,
        buttons: [
          Dialog.cancelButton(),
          Dialog.okButton({ label: trans.__('Run') })
        ]
      });
      if (!result.button.accept || !result.value) {
        return;
      }
      try {
        const req = result.value;
        if (nb.context.model.dirty) {
          await nb.context.save(); // the job runs the file, so run what the user sees
        }
        if (mode === 'job') {
          const job = await submitJob({ path: nb.context.path, ...req });
          await app.commands.execute(CommandIDs.openJob, { id: job.id });
        } else {
          const run = await startRun({
            path: nb.context.path,
            backend: req.backend ?? 'local',
            parameters: req.parameters
          });
          await app.commands.execute(CommandIDs.openRun, { id: run.id });
        }
      } catch (error) {
        void showErrorMessage(
          trans.__('nbscale could not start it'),
          errorText(error)
        );
      }
    };
    const currentNotebook = () => tracker?.currentWidget ?? null;
    app.commands.addCommand(CommandIDs.runAsJob, {
      label: trans.__('Run as job'),
      caption: trans.__('Run this notebook as an nbscale job'),
      isEnabled: () => !!currentNotebook(),
      execute: () => {
        const nb = currentNotebook();
        return nb ? runDialog(nb, 'job') : undefined;
      }
    });
    app.commands.addCommand(CommandIDs.runAsPipeline, {
      label: trans.__('Run as pipeline'),
      caption: trans.__('Run this notebook as an nbscale pipeline'),
      isEnabled: () => !!currentNotebook(),
      execute: () => {
        const nb = currentNotebook();
        return nb ? runDialog(nb, 'pipeline') : undefined;
      }
    });

    // -- notebook toolbar buttons
    app.docRegistry.addWidgetExtension('Notebook', {
      createNew: (
        nb: NotebookPanel,
        _context: DocumentRegistry.IContext<INotebookModel>
      ): IDisposable => {
        const asJob = new ToolbarButton({
          label: trans.__('Run as job'),
          tooltip: trans.__('Run this notebook as an nbscale job'),
          onClick: () => void runDialog(nb, 'job')
        });
        const asPipeline = new ToolbarButton({
          label: trans.__('Run as pipeline'),
          tooltip: trans.__('Run this notebook as an nbscale pipeline'),
          onClick: () => void runDialog(nb, 'pipeline')
        });
        asJob.addClass('nbs-run-as-job');
        asPipeline.addClass('nbs-run-as-pipeline');
        nb.toolbar.insertItem(10, 'nbscale-run-as-job', asJob);
        nb.toolbar.insertItem(11, 'nbscale-run-as-pipeline', asPipeline);
        return new DisposableDelegate(() => {
          asJob.dispose();
          asPipeline.dispose();
        });
      }
    });
  }
};

export default plugin;
